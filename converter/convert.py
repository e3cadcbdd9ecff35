"""The pipeline: source model -> quantized codes -> .qpk; and .qpk -> restored float model.

Per-tensor work (read, quantize, measure, pack, entropy-code) runs in a thread pool: numpy, zstd
and file reads release the GIL, so both cores work. Results are written in the model's tensor
order, and each tensor's bytes depend on that tensor alone, so the file is the same for any
number of workers. Only a few tensors are in flight at once, which bounds memory.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from qpack.converter import __version__
from qpack.converter.measure import entropy_bits
from qpack.converter.policy import Decision, Policy
from qpack.converter.quant import get_quantizer
from qpack.converter.quant.stream import Quantized, check_finite, quantize_stream
from qpack.formats.atomic import prepare_parent
from qpack.formats.model import SourceModel, Weight
from qpack.formats.qpk import (
    RAW,
    ZSTD,
    BlobKind,
    Codec,
    CodeContext,
    Grouping,
    QpkReader,
    QpkWriter,
    TensorEntry,
    encode,
    unpack,
    zeroed_bytes,
)
from qpack.formats.qpk import meta as qpk_meta
from qpack.formats.registry import adapter

T = TypeVar("T")


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


@dataclass
class TensorStat:
    """Per-tensor figures gathered while converting."""

    name: str
    key: str
    shape: tuple[int, ...]
    dtype: str
    role: str
    scheme: str
    bits: int
    axis: int | None
    count: int
    packed_bytes: int  # the dense n-bit stream
    stored_bytes: int  # the stream as stored: packed_bytes, or less when entropy-coded
    param_bytes: int
    entropy: float
    levels_used: int
    signal: float  # energy of the float weights
    noise: float  # energy of the quantization error
    block: int | None = None
    param_dtypes: dict[str, str] | None = None
    context_entropy: float | None = None  # bits per code under the ans codec's best context model (tables not
    # counted); measured when the ans codec stores the codes
    why: str = ""  # how an allocation chose the setting
    clip: str = "minmax"  # how each group's range was set (converter.quant.CLIPS)
    rdo: float = 0.0  # lambda of the rate-aware rounding the codes were chosen with

    @property
    def sqnr_db(self) -> float | None:
        return db(self.signal, self.noise)


def db(signal: float, noise: float) -> float | None:
    """10 log10(signal / noise), None when there is no noise to speak of."""
    if noise <= 0:
        return None
    return round(float(10 * np.log10(signal / noise)), 3) if signal > 0 else None


@dataclass
class KeptStat:
    name: str
    shape: tuple[int, ...]
    dtype: str
    role: str
    reason: str
    nbytes: int


@dataclass
class ConvertResult:
    path: Path
    size: int
    tensors: list[TensorStat] = field(default_factory=list)
    kept: list[KeptStat] = field(default_factory=list)
    graph_bytes: int = 0
    skeleton_bytes: int = 0  # the graph before compression, less any zeros in quantized tensors' places


@dataclass
class _Done:
    """One tensor quantized and encoded, ready to be appended in order."""

    q: Quantized
    codes: tuple[int, memoryview, int]
    params: dict[str, tuple[int, memoryview, int]]
    context_entropy: float | None
    codec: int  # the id of the codec `codes` went through
    decision: Decision | None = None  # the setting it took where not the one asked (Decision.strict)


def _quantize(w: Weight, d: Decision, scheme: str, clip: str, rdo: float = 0.0) -> Quantized:
    x = np.asarray(w.array, dtype=np.float32)
    check_finite(x, w.name)
    return quantize_stream(get_quantizer(d.scheme or scheme), x, d.bits, d.grouping, d.clip or clip, d.dtypes, d.lam(rdo))


def _code(q: Quantized, w: Weight, d: Decision, codec: Codec) -> _Done:
    # the context model's bound is measured where a codec models the codes, in the pass that chooses
    # the codec's model (qpack report measures it always)
    chosen = codec.choose_model(unpack(q.packed, d.bits, w.size), d.bits)
    h_ctx, model = chosen if chosen is not None else (None, None)
    ctx = CodeContext(d.bits, w.size, w.shape, d.grouping, model)
    return _Done(q, encode(q.packed, BlobKind.CODES, codec, ctx=ctx), {k: encode(v, BlobKind.PARAM) for k, v in q.params.items()},
                 h_ctx, codec.id)


def _work(w: Weight, d: Decision, scheme: str, clip: str, codec: Codec, rdo: float = 0.0) -> _Done:
    q = _quantize(w, d, scheme, clip, rdo)
    if d.strict and d.dtypes and any(k in q.dtypes and q.dtypes[k] != v for k, v in d.dtypes.items()):
        d = d.per_channel(w)  # the target's block dtypes cannot hold these parameters
        return replace(_code(_quantize(w, d, scheme, clip, rdo), w, d, codec), decision=d)
    return _code(q, w, d, codec)


REUSE_BYTES = 256 << 20  # codes an allocator's trials keep for the next trial


class Reuse:
    """Tensors quantized and coded by earlier conversions of one model (an allocator's trials), by
    weight and setting: a trial redoes only the tensors whose setting it changes, and a conversion
    with another codec than the trials' only codes them again. Keeps at most `budget` bytes of
    codes; tensors past that are simply redone."""

    def __init__(self, budget: int = REUSE_BYTES) -> None:
        self.done: dict[tuple[Any, ...], _Done] = {}
        self.left = budget
        self.lock = threading.Lock()

    def job(self, w: Weight, d: Decision, scheme: str, clip: str, codec: Codec, rdo: float) -> Callable[[], _Done]:
        key = (w.key, d.scheme or scheme, d.bits, d.axis, d.block, d.clip or clip, tuple(sorted((d.dtypes or {}).items())),
               d.lam(rdo))

        def run() -> _Done:
            held = self.done.get(key)
            if held is not None:
                if held.codec == codec.id:
                    return held
                return replace(_code(held.q, w, held.decision or d, codec), decision=held.decision)
            done = _work(w, d, scheme, clip, codec, rdo)
            coded = len(done.codes[1]) if done.codes[0] != RAW.id else 0  # stored raw (as asked, or not shrunk): packed
            size = done.q.packed.nbytes + coded + sum(len(v[1]) for v in done.params.values())
            with self.lock:
                if size <= self.left:
                    self.done[key], self.left = done, self.left - size
            return done

        return run


def in_order(pool: Executor, jobs: Iterable[Callable[[], T]], ahead: int) -> Iterator[T]:
    """Results of jobs in submission order, with at most `ahead` running or waiting at once (jobs may
    be a generator that makes each job only as it is submitted)."""
    window: deque[Future[T]] = deque()
    todo = iter(jobs)
    for job in todo:
        window.append(pool.submit(job))
        if len(window) >= ahead:
            break
    while window:
        done = window.popleft().result()
        nxt = next(todo, None)
        if nxt is not None:
            window.append(pool.submit(nxt))
        yield done


def convert(model: SourceModel, policy: Policy, out: Path, progress: Callable[[int, int], None] | None = None,
            codec: Codec = RAW, workers: int | None = None, reuse: Reuse | None = None) -> ConvertResult:
    """Quantize `model` under `policy` and write the container to `out` atomically.

    `codec` entropy-codes each packed code stream (kept only where it is smaller); `reuse` carries
    tensors over from earlier conversions of the same model.
    """
    result = ConvertResult(Path(out), 0)
    weights = model.weights
    decisions = [(w, policy.decide(w)) for w in weights]
    chosen = [(w, d) for w, d in decisions if d.quantize]
    kept: list[dict[str, Any]] = []
    for w, d in decisions:
        if not d.quantize:
            result.kept.append(KeptStat(w.name, w.shape, w.dtype, w.role.value, d.reason, w.nbytes))
            kept.append({"name": w.name, "key": w.key, "shape": list(w.shape), "dtype": w.dtype, "role": w.role.value, "reason": d.reason})
    entries: list[TensorEntry] = []
    workers = workers or default_workers()
    jobs = [reuse.job(w, d, policy.scheme, policy.clip, codec, policy.rdo) if reuse is not None
            else partial(_work, w, d, policy.scheme, policy.clip, codec, policy.rdo) for w, d in chosen]
    prepare_parent(Path(out))  # the spill file goes beside the output
    with QpkWriter(Path(out).parent, Path(out)) as writer, ThreadPoolExecutor(workers) as pool:
        for i, ((w, d), done) in enumerate(zip(chosen, in_order(pool, jobs, workers + 1))):
            d = done.decision or d
            codes_blob = writer.add_encoded(BlobKind.CODES, *done.codes)
            params = {k: writer.add_encoded(BlobKind.PARAM, *v) for k, v in done.params.items()}
            scheme = d.scheme or policy.scheme
            entries.append(TensorEntry(w.name, w.key, w.shape, w.dtype, w.role.value, scheme, d.bits, d.grouping,
                                       codes_blob, params, done.q.dtypes))
            q = done.q
            result.tensors.append(TensorStat(w.name, w.key, w.shape, w.dtype, w.role.value, scheme, d.bits, d.axis, w.size,
                                             q.packed.nbytes, writer.blob(codes_blob).length,
                                             sum(v.nbytes for v in q.params.values()), entropy_bits(q.hist),
                                             int((q.hist > 0).sum()), q.signal, q.noise, d.block, q.dtypes,
                                             done.context_entropy, d.why, d.clip or policy.clip,
                                             d.lam(policy.rdo)))
            if progress:
                progress(i + 1, len(chosen))
        skeleton = model.skeleton({e.key for e in entries})
        graph = writer.add(skeleton, BlobKind.GRAPH, ZSTD, zeroed_bytes(entries))
        meta = qpk_meta.build(__version__, model.format, {"name": model.path.name, "bytes": model.file_bytes},
                              policy.options(codec.name), graph, hashlib.sha256(skeleton).hexdigest(), entries, kept)
        # what an export carrying the graph writes of it: not the zeros that keep stripped tensors' places
        result.skeleton_bytes = len(skeleton) - (zeroed_bytes(entries) if adapter(model.format).zeroed else 0)
        del skeleton
        result.graph_bytes = writer.blob(graph).length
        result.size = writer.write(out, meta)
    return result


def quantize_weight(w: Weight, scheme: str, bits: int, grouping: Grouping | int | None,
                    clip: str = "minmax") -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Codes and flat per-group parameters of one weight, whole tensor in memory."""
    x = np.asarray(w.array, dtype=np.float32)
    check_finite(x, w.name)
    return get_quantizer(scheme).quantize(x, bits, grouping, clip)


class _Ahead:
    """Loaders that decode the next few tensors in worker threads while the adapter writes the current one.

    Adapters ask for tensors in graph order, which is the container's entry order; a tensor asked
    for out of that order is simply decoded then.
    """

    def __init__(self, q: QpkReader, pool: ThreadPoolExecutor, ahead: int) -> None:
        self.q, self.pool, self.ahead = q, pool, ahead
        self.order = [e.key for e in q.entries]
        self.entries = {e.key: e for e in q.entries}
        self.index = {k: i for i, k in enumerate(self.order)}
        self.running: dict[str, Future[np.ndarray]] = {}

    def load(self, key: str) -> np.ndarray:
        i = self.index[key]
        for k in self.order[i : i + self.ahead + 1]:
            if k not in self.running:
                self.running[k] = self.pool.submit(self.q.dequantize, self.entries[k])
        for k in [k for k in self.running if self.index[k] < i]:  # skipped: never asked for in order
            self.running.pop(k).cancel()
        return self.running.pop(key).result()

    def loaders(self) -> dict[str, Callable[[], np.ndarray]]:
        return {k: partial(self.load, k) for k in self.order}


def restore(qpk: Path, out: Path, workers: int | None = None) -> list[Path]:
    """Rebuild a runnable float model from a container, tensor by tensor; returns the files written."""
    from qpack.formats.registry import restore_model

    workers = workers or default_workers()
    with QpkReader(qpk) as q, ThreadPoolExecutor(workers) as pool:
        return restore_model(q.format, q.graph(), _Ahead(q, pool, workers).loaders(), out)
