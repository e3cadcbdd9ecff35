"""The pipeline: source model -> quantized codes -> .qpk; and .qpk -> restored float model."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from converter import __version__
from converter.measure import code_histogram, entropy_bits, noise_energy
from converter.packing import pack, packed_size, unpack
from converter.policy import Policy
from converter.schemes import get_scheme, group_count
from formats.constants import CODES_ZSTD_LEVEL, SOURCE_FORMATS, BlobKind, Codec
from formats.container import Container, ContainerWriter
from formats.entries import PARAM_DTYPES, TensorEntry, parse_tensors
from formats.errors import FormatError
from formats.model import SourceModel, Weight


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


def quantize_weight(w: Weight, scheme: str, bits: int, axis: int | None,
                    values: NDArray | None = None, clip: str = "minmax") -> tuple[NDArray[np.uint8], dict[str, NDArray]]:
    """Codes and per-group parameters of one weight (of `values` when already read), in float32."""
    x = np.asarray(w.array if values is None else values, dtype=np.float32)
    if not np.isfinite(x).all():
        raise FormatError(f"tensor '{w.name}' holds NaN or infinite values; refusing to quantize it")
    return get_scheme(scheme).quantize(x, bits, axis, clip)


def convert(model: SourceModel, policy: Policy, out: Path, progress: Callable[[int, int], None] | None = None,
            codec: Codec = Codec.RAW) -> ConvertResult:
    """Quantize `model` under `policy` and write the container to `out` atomically.

    `codec` ZSTD entropy-codes each packed code stream (kept only where it is smaller).
    """
    writer = ContainerWriter()
    result = ConvertResult(out, 0)
    entries: list[dict[str, Any]] = []
    kept: list[dict[str, Any]] = []
    weights = model.weights
    for i, w in enumerate(weights):
        d = policy.decide(w)
        if not d.quantize:
            result.kept.append(KeptStat(w.name, w.shape, w.dtype, w.role.value, d.reason, w.nbytes))
            kept.append({"name": w.name, "key": w.key, "shape": list(w.shape), "dtype": w.dtype, "role": w.role.value, "reason": d.reason})
            continue
        x = w.array
        codes, params = quantize_weight(w, policy.scheme, d.bits, d.axis, x, policy.clip)
        hist = code_histogram(codes, d.bits)
        signal, noise = noise_energy(x, get_scheme(policy.scheme).dequantize(codes, params, d.bits, d.axis))
        del x
        packed = pack(codes, d.bits)
        del codes
        codes_blob = writer.add(packed, BlobKind.CODES, codec, CODES_ZSTD_LEVEL)
        entry = TensorEntry(w.name, w.key, w.shape, w.dtype, w.role.value, policy.scheme, d.bits, d.axis, codes_blob,
                            {k: writer.add(np.asarray(v, PARAM_DTYPES[k]), BlobKind.PARAM) for k, v in params.items()})
        entries.append(entry.to_meta())
        result.tensors.append(TensorStat(w.name, w.key, w.shape, w.dtype, w.role.value, policy.scheme, d.bits, d.axis, w.size,
                                         packed.nbytes, writer.blob_length(codes_blob), sum(v.nbytes for v in params.values()),
                                         entropy_bits(hist),
                                         int((hist > 0).sum()), signal, noise))
        if progress:
            progress(i + 1, len(weights))
    skeleton = model.skeleton({e["key"] for e in entries})
    graph = writer.add(skeleton, BlobKind.GRAPH, Codec.ZSTD)
    meta = {
        "qpack": __version__,
        "format": model.format,
        "source": {"name": model.path.name, "bytes": model.file_bytes},
        "options": {"scheme": policy.scheme, "bits": policy.bits, "per_channel": policy.per_channel, "clip": policy.clip,
                    "codec": codec.name.lower(),
                    "keep": list(policy.keep), "include": list(policy.include),
                    "bits_for": [[p, b] for p, b in policy.bits_for]},
        "graph": graph,
        "graph_sha256": hashlib.sha256(skeleton).hexdigest(),
        "tensors": entries,
        "kept": kept,
    }
    result.graph_bytes = writer.blob_length(graph)
    result.size = writer.write(out, meta)
    return result


class QpkFile:
    """A container opened for restoring: validated entries, tensors decoded on demand."""

    def __init__(self, path: Path) -> None:
        self.container = Container(path)
        meta = self.container.meta
        self.format = meta.get("format")
        if self.format not in SOURCE_FORMATS:
            raise FormatError(f"{path}: unknown source format {self.format!r}")
        self.entries = parse_tensors(meta.get("tensors"))
        for e in self.entries:
            self._check_sizes(e)
        self.kept = meta.get("kept") if isinstance(meta.get("kept"), list) else []

    def _check_sizes(self, e: TensorEntry) -> None:
        blobs = self.container.blobs
        for idx in [e.codes, *e.params.values()]:
            if not 0 <= idx < len(blobs):
                raise FormatError(f"tensor '{e.name}': blob index {idx} out of range")
        got = blobs[e.codes].raw_length
        want = packed_size(e.count, e.bits)
        if got != want:
            raise FormatError(f"tensor '{e.name}': payload {got} bytes, expected {want} for shape {e.shape} at {e.bits} bits")
        groups = group_count(e.shape, e.axis)
        for pname, idx in e.params.items():
            want = groups * np.dtype(PARAM_DTYPES[pname]).itemsize
            if blobs[idx].raw_length != want:
                raise FormatError(f"tensor '{e.name}': parameter '{pname}' is {blobs[idx].raw_length} bytes, expected {want}")

    def codes(self, e: TensorEntry) -> NDArray[np.uint8]:
        raw = self.container.blob_bytes(e.codes, BlobKind.CODES)
        codes = unpack(np.frombuffer(raw, dtype=np.uint8), e.bits, e.count)
        return codes.reshape(e.shape)

    def params(self, e: TensorEntry) -> dict[str, NDArray]:
        return {k: np.frombuffer(self.container.blob_bytes(i, BlobKind.PARAM), dtype=PARAM_DTYPES[k]) for k, i in e.params.items()}

    def dequantize(self, e: TensorEntry) -> NDArray[np.float32]:
        codes = self.codes(e)
        return get_scheme(e.scheme).dequantize(codes, self.params(e), e.bits, e.axis)

    def graph(self) -> bytes:
        index = self.container.meta.get("graph")
        if not isinstance(index, int):
            raise FormatError(f"{self.container.path}: metadata has no graph blob")
        data = bytes(self.container.blob_bytes(index, BlobKind.GRAPH))
        digest = self.container.meta.get("graph_sha256")
        if digest != hashlib.sha256(data).hexdigest():
            raise FormatError(f"{self.container.path}: graph checksum mismatch")
        return data

    def close(self) -> None:
        self.container.close()


def restore(qpk: Path, out: Path) -> list[Path]:
    """Rebuild a runnable float model from a container; returns the files written."""
    from formats.registry import restore_model

    q = QpkFile(qpk)
    try:
        tensors = {e.key: partial(q.dequantize, e) for e in q.entries}
        return restore_model(str(q.format), q.graph(), tensors, out)
    finally:
        q.close()
