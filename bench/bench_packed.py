"""qpack's packed allocation against GGUF Q4_K and Q4_0 at the same bits, judged on the model's outputs.

    python bench/bench_packed.py [--models digits "ocr rec"] [--samples 16] [--json out.json]

Needs gguf-py (pip install -e '.[bench]') and the fixture models (pip install --no-deps -r tests/fixtures.txt).

The weights compared are each fixture's matrices: MatMul and Gemm weights, and the LSTM kernels of
silero (x @ W^T like a dense layer); every other tensor (Conv, biases, norms) stays float on every
side. GGUF quantizes a matrix in rows along its reduction axis (the input dimension: a column of
ONNX MatMul's B [K, N], a row of Gemm's B with transB=1), read from qpack's own ONNX reader.

GGUF side: the bytes llama.cpp's reference quantizers write. Q4_K is a vectorized port of
`quantize_row_q4_K_ref` (ggml-quants.c: super-blocks of 256 = 8 sub-blocks of 32, each sub-block's
scale and min fitted by `make_qkx2_quants`, both quantized to 6 bits against f16 super-block scales
d and dmin; 144 bytes per 256 weights), Q4_0 one of `quantize_row_q4_0_ref` (blocks of 32, an f16
scale, 18 bytes); gguf-py decodes the bytes. A row length Q4_K cannot take falls back as
llama.cpp's `llama_tensor_get_type` does (Q4_K -> Q5_0 where the row is not a multiple of 256).
Where the fallback's blocks do not divide the row either, llama.cpp keeps the tensor in F16; here
instead the rows are padded with zeros to the next whole block (Q5_0 for Q4_K, Q4_0 for Q4_0) and
the padding's bytes are counted: the PP-OCR recognizer's rows of 120 and 240 would otherwise keep
every matrix in F16. Bits per weight are the stored bytes over the real weights.

qpack side: `qpack.convert(..., target_bpw=B, codec="raw")` on the same tensors (every other one
kept), at B = the bits GGUF used on that model, each tensor's scheme chosen, under each objective
(balanced is the default); the container is restored with `qpack.unpack` and run. `SIDES` holds
the convert keywords of each qpack variant.

Fidelity: each model in onnxruntime (basic graph optimization, one thread) on `--samples` inputs
drawn from its input specs as bench_fidelity draws them (seed 0: images uniform in [0, 1], the OCR
recognizer at 48 x 320, the classifier at 48 x 192; audio N(0, 0.05^2) chunks of 512 from a zero
state), one input per run; per input the cosine between the float model's outputs and the
quantized one's, all outputs flattened together; reported as the mean and the least over inputs.
Weight SQNR is pooled over the compared tensors (signal and noise summed over all of them).

Before the models, the ports are checked: Q4_0 bytes against gguf-py's own quantizer (identical),
the Q4_K port's own reconstruction against gguf-py's decode of its bytes (identical: the layout is
right), Q4_K requantized from its decoded values (how many blocks come back byte for byte), and
both types' SQNR on Gaussian weights.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import math
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_fidelity import Fixture, container_sqnr, draw, glob_escape, packaged  # noqa: E402

import qpack  # noqa: E402
from qpack.converter.runtime import open_runner  # noqa: E402
from qpack.formats.model import Role  # noqa: E402
from qpack.formats.registry import open_model, restore_model  # noqa: E402

Array = NDArray[np.float32]

MODELS = (
    Fixture("digits", "", "samples/digits_cnn.onnx", "image"),
    Fixture("ocr rec", "rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "image", (48, 320)),
    Fixture("ocr cls", "rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "image", (48, 192)),
    Fixture("silero op15", "silero-vad", "silero_vad/data/silero_vad_16k_op15.onnx", "audio"),
)
MATRIX_ROLES = (Role.MATRIX, Role.RECURRENT)
OBJECTIVES = ("balanced", "layers", "pooled", "sized", "outputs")
# qpack's variants: label -> the keywords they add to convert. "for onnx-matmulnbits" allocates only
# what MatMulNBits stores natively (2/4/8 bits, blocks 16..256, float32 scales), its bits counted as
# that export stores them.
SIDES: dict[str, dict[str, Any]] = {"raw": {}, "for onnx-matmulnbits": {"target": "onnx-matmulnbits"}}

QK_K, QK = 256, 32  # super-block and block lengths of GGUF's k-quants and its 32-blocks


# --- GGUF's reference quantizers, vectorized ----------------------------------------------------


def seq_sum(a: NDArray[Any]) -> Array:
    """Sums over the last axis in float32, left to right as the C loops add (np.sum pairs terms)."""
    return np.cumsum(a, axis=-1, dtype=np.float32)[..., -1]


def nearest_int(v: Array) -> NDArray[np.int32]:
    # ggml's nearest_int adds 1.5 * 2^23 and reads the mantissa: round half to even, as rint
    return np.rint(v).astype(np.int32)


def f16(v: Array) -> NDArray[np.float16]:
    return np.asarray(v, np.float32).astype(np.float16)  # round to nearest even, as GGML_FP32_TO_FP16


def make_qkx2_quants(x: Array, w: Array, nmax: int, rmin: float, rdelta: float, nstep: int) -> tuple[Array, Array, NDArray[np.int32]]:
    """ggml's make_qkx2_quants over rows of x (squared error, weights w): (scale, the_min, L) per row,
    the_min >= 0 subtracted: x ~ scale * L - the_min. The same float32 steps as the C."""
    f = np.float32
    lo = np.minimum(x.min(axis=-1), f(0))
    hi = x.max(axis=-1)
    sum_w, sum_x = seq_sum(w), seq_sum(w * x)
    flat = hi == lo
    span = np.where(flat, f(1), hi - lo)
    iscale = f(nmax) / span
    scale = f(1) / iscale
    L = np.clip(nearest_int(iscale[:, None] * (x - lo[:, None])), 0, nmax)
    diff = scale[:, None] * L.astype(f) + lo[:, None] - x
    best = seq_sum(w * (diff * diff))
    for step in range(nstep + 1):
        span = np.where(flat, f(1), hi - lo)  # the C reads min afresh: a better fit found moves the next steps' grid
        iscale = (f(rmin) + f(rdelta) * f(step) + f(nmax)) / span
        aux = np.clip(nearest_int(iscale[:, None] * (x - lo[:, None])), 0, nmax)
        la = aux.astype(f)
        sum_l, sum_l2, sum_xl = seq_sum(w * la), seq_sum(w * la * la), seq_sum(w * la * x)
        D = sum_w * sum_l2 - sum_l * sum_l
        with np.errstate(divide="ignore", invalid="ignore"):
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            positive = this_min > 0
            this_scale = np.where(positive, sum_xl / sum_l2, this_scale)
        this_min = np.where(positive, f(0), this_min)
        diff = this_scale[:, None] * la + this_min[:, None] - x
        err = seq_sum(w * (diff * diff))
        take = (D > 0) & (err < best) & ~flat
        L = np.where(take[:, None], aux, L)
        best = np.where(take, err, best)
        scale = np.where(take, this_scale, scale)
        lo = np.where(take, this_min, lo)
    scale = np.where(flat, f(0), scale)
    L = np.where(flat[:, None], 0, L)
    return scale.astype(f), (-lo).astype(f), L


def q4_k_blocks(x: Array) -> tuple[NDArray[np.uint8], Array]:
    """quantize_row_q4_K_ref on rows of 256: (the 144-byte blocks, the values they decode to, as the port computes them)."""
    f = np.float32
    n = x.shape[0]
    sub = x.reshape(n * 8, 32)
    av_x = np.sqrt(seq_sum(sub * sub) / f(32))
    weights = av_x[:, None] + np.abs(sub)
    scales, mins, L = make_qkx2_quants(sub, weights, 15, -1.0, 0.1, 20)
    scales, mins, L = scales.reshape(n, 8), mins.reshape(n, 8), L.reshape(n, 8, 32)
    max_scale = np.maximum(scales.max(axis=1), f(0))  # the C starts both maxima at 0
    max_min = np.maximum(mins.max(axis=1), f(0))
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, f(63) / max_scale, f(0))
        inv_min = np.where(max_min > 0, f(63) / max_min, f(0))
    ls = np.minimum(nearest_int(inv_scale[:, None] * scales), 63).astype(np.uint8)
    lm = np.minimum(nearest_int(inv_min[:, None] * mins), 63).astype(np.uint8)
    packed = np.zeros((n, 12), np.uint8)  # sub-blocks 0-3: 6 bits each in bytes 0-7; 4-7: low nibbles in 8-11, top 2 bits above 0-7
    packed[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    packed[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    d, dmin = f16(max_scale / f(63)), f16(max_min / f(63))
    dl = d.astype(f)[:, None] * ls.astype(f)
    ml = dmin.astype(f)[:, None] * lm.astype(f)
    with np.errstate(divide="ignore", invalid="ignore"):
        again = np.clip(nearest_int((x.reshape(n, 8, 32) + ml[..., None]) / dl[..., None]), 0, 15)
    L = np.where((dl != 0)[..., None], again, L).astype(np.uint8)  # a sub-block whose scale is 0 keeps its first codes
    pairs = L.reshape(n, 4, 2, 32)  # 64 weights per 32 bytes: the first 32 in the low nibbles, the next 32 in the high
    qs = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(n, 128)
    blocks = np.concatenate([d.reshape(n, 1).view(np.uint8), dmin.reshape(n, 1).view(np.uint8), packed, qs], axis=1)
    return blocks, (dl[..., None] * L.astype(f) - ml[..., None]).reshape(n, QK_K)


def q4_0_blocks(x: Array) -> NDArray[np.uint8]:
    """quantize_row_q4_0_ref on rows of 32: the 18-byte blocks (f16 d = the signed largest magnitude / -8, then 16 bytes of nibbles)."""
    f = np.float32
    big = np.take_along_axis(x, np.abs(x).argmax(axis=1)[:, None], axis=1)[:, 0]  # the first of the largest magnitudes
    d = big / f(-8)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, f(1) / d, f(0))
    # (int8_t)(x * id + 8.5f) truncates toward zero; the sum is >= 0.5
    q = np.minimum(np.trunc(x * inv[:, None] + f(8.5)), 15).astype(np.uint8)
    qs = q[:, :16] | (q[:, 16:] << 4)
    return np.concatenate([f16(d).reshape(-1, 1).view(np.uint8), qs], axis=1)


def q5_0_blocks(x: Array) -> NDArray[np.uint8]:
    """Q5_0 (llama.cpp's fallback for rows Q4_K cannot take) through gguf-py's own quantizer."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    return np.asarray(quantize(x, GGMLQuantizationType.Q5_0)).reshape(x.shape[0], -1)


@dataclass(frozen=True)
class GgufType:
    name: str
    block: int  # weights per block
    encode: Any  # rows of `block` weights -> their blocks' bytes


TYPES = {t.name: t for t in (GgufType("Q4_K", QK_K, lambda x: q4_k_blocks(x)[0]), GgufType("Q4_0", QK, q4_0_blocks),
                             GgufType("Q5_0", QK, q5_0_blocks))}
# llama_tensor_get_type's fallback where a row is not a whole number of super-blocks; the last resort
# (its F16) is replaced by zero padding, see the module docstring
FALLBACK = {"Q4_K": ("Q4_K", "Q5_0"), "Q4_0": ("Q4_0",)}


def gguf_rows(rows: Array, wanted: str) -> tuple[Array, int, str]:
    """Rows [R, K] through GGUF type `wanted` (or its fallback): (decoded values, stored bytes, the type used and how)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    k = rows.shape[1]
    kind = next((TYPES[t] for t in FALLBACK[wanted] if k % TYPES[t].block == 0), None)
    padded = kind is None
    kind = kind or TYPES[FALLBACK[wanted][-1]]
    width = -(-k // kind.block) * kind.block
    x = np.zeros((rows.shape[0], width), np.float32)
    x[:, :k] = rows
    blocks = kind.encode(x.reshape(-1, kind.block))
    y = dequantize(blocks.reshape(rows.shape[0], -1), GGMLQuantizationType[kind.name]).reshape(rows.shape[0], width)
    return y[:, :k].astype(np.float32), int(blocks.nbytes), kind.name + (f" padded {k}->{width}" if padded else "")


def gguf_tensor(a: Array, reduction: int, wanted: str) -> tuple[Array, int, str]:
    """A weight through GGUF, its rows along the reduction axis."""
    moved = np.moveaxis(a, reduction, -1)
    y, nbytes, how = gguf_rows(moved.reshape(-1, moved.shape[-1]), wanted)
    return np.moveaxis(y.reshape(moved.shape), -1, reduction), nbytes, how


def check_ports() -> list[str]:
    """The ports against gguf-py and against themselves, on Gaussian weights (seed 0)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, QK_K)).astype(np.float32)
    x[:8] *= 40  # a few outlying super-blocks, and all-zero and constant sub-blocks (the C's special cases)
    x[8, :32] = 0
    x[9, 32:64] = 0.25
    x[10, 64:96] = -0.25
    lines = []
    mine, theirs = q4_0_blocks(x.reshape(-1, QK)), np.asarray(quantize(x, GGMLQuantizationType.Q4_0)).reshape(-1, 18)
    lines.append(f"Q4_0 bytes identical to gguf-py's quantizer: {np.array_equal(mine, theirs)} ({mine.shape[0]:,} blocks)")
    blocks, own = q4_k_blocks(x)
    decoded = dequantize(blocks, GGMLQuantizationType.Q4_K).reshape(x.shape)
    lines.append(f"Q4_K port's own reconstruction equals gguf-py's decode of its bytes: {np.array_equal(own, decoded)}")
    again, _ = q4_k_blocks(decoded)
    redecoded = dequantize(again, GGMLQuantizationType.Q4_K).reshape(x.shape)
    same = float(np.mean(np.all(again == blocks, axis=1)))
    moved = float(np.mean(redecoded != decoded))
    lines.append(f"Q4_K requantized from its decoded values: {same:.1%} of super-blocks byte for byte, "
                 f"{moved:.2%} of values moved, SQNR of the second pass against the first {db(decoded, redecoded):.1f} dB")
    g = x[16:]
    q4k = dequantize(q4_k_blocks(g)[0], GGMLQuantizationType.Q4_K).reshape(g.shape)
    q40 = dequantize(q4_0_blocks(g.reshape(-1, QK)), GGMLQuantizationType.Q4_0).reshape(g.shape)
    lines.append(f"SQNR on N(0, 1) weights: Q4_K {db(g, q4k):.2f} dB, Q4_0 {db(g, q40):.2f} dB (both 4.5 bits per weight)")
    return lines


# --- models ---------------------------------------------------------------------------------------


def db(x: NDArray, y: NDArray) -> float:
    noise = float(np.square(np.asarray(x, np.float64) - y).sum())
    return 10 * math.log10(float(np.square(x, dtype=np.float64).sum()) / noise) if noise > 0 else math.inf


def pooled_db(ref: dict[str, Array], got: dict[str, Array]) -> float:
    signal = sum(float(np.square(a, dtype=np.float64).sum()) for a in ref.values())
    noise = sum(float(np.square(a.astype(np.float64) - got[k]).sum()) for k, a in ref.items())
    return 10 * math.log10(signal / noise) if noise > 0 else math.inf


@dataclass
class Case:
    label: str
    path: Path
    tensors: dict[str, Array]  # the compared weights, by key
    reduction: dict[str, int]
    others: tuple[str, ...]  # every other weight's key, as a literal pattern for `keep`
    feeds: list[dict[str, NDArray]]  # one run's inputs each
    reference: list[NDArray] = field(default_factory=list)  # the float model's outputs on each, flattened together


def model_path(fx: Fixture) -> Path | None:
    return ROOT / fx.relpath if not fx.dist else packaged(fx.dist, fx.relpath)


def case_of(fx: Fixture, path: Path, samples: int) -> Case:
    model = open_model(path)
    try:
        chosen = [w for w in model.weights if w.role in MATRIX_ROLES and w.reduction is not None and w.is_float]
        tensors = {w.key: np.asarray(w.array, np.float32) for w in chosen}
        reduction = {w.key: int(w.reduction) for w in chosen if w.reduction is not None}
        others = tuple(glob_escape(w.key) for w in model.weights if w.key not in tensors)
    finally:
        model.close()
    specs = open_runner(path).inputs
    drawn = draw(specs, fx, 0, samples)
    # a run takes one input: batched inputs sliced, the rest (a state, a sample rate) fed whole
    split = {s.name for s in specs if s.shape and s.shape[0] in (None, 1)}
    feeds = [{k: (v[i : i + 1] if k in split else v) for k, v in drawn.items()} for i in range(samples)]
    case = Case(fx.label, path, tensors, reduction, others, feeds)
    case.reference = outputs(path, feeds)
    return case


def runner(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def outputs(path: Path, feeds: list[dict[str, NDArray]]) -> list[NDArray]:
    session = runner(path)
    return [np.concatenate([np.asarray(o, np.float64).ravel() for o in session.run(None, f)]) for f in feeds]


def cosines(case: Case, path: Path) -> tuple[float, float]:
    """(mean, least) over the inputs of the cosine between the float model's outputs and `path`'s."""
    got = outputs(path, case.feeds)
    cos = []
    for r, g in zip(case.reference, got):
        denom = float(np.linalg.norm(r) * np.linalg.norm(g))
        cos.append(float(r @ g) / denom if denom > 0 else float(np.array_equal(r, g)))
    return float(np.mean(cos)), float(np.min(cos))


def with_weights(case: Case, arrays: dict[str, Array], out: Path) -> Path:
    """The model with the compared weights replaced (as bench_nncodec's judge puts decoded weights back)."""
    model = open_model(case.path)
    try:
        restore_model("onnx", model.skeleton(set(arrays)), {k: partial(np.asarray, a) for k, a in arrays.items()}, out)
    finally:
        model.close()
    return out


@dataclass(frozen=True)
class Row:
    side: str
    bpw: float
    sqnr: float
    cos_mean: float
    cos_min: float
    note: str = ""


def gguf_side(case: Case, wanted: str, tmp: Path) -> Row:
    decoded, stored, used = {}, 0, []
    for k, a in case.tensors.items():
        decoded[k], nbytes, how = gguf_tensor(a, case.reduction[k], wanted)
        stored += nbytes
        used.append(how)
    count = sum(a.size for a in case.tensors.values())
    mean, least = cosines(case, with_weights(case, decoded, tmp / f"{wanted}.onnx"))
    kinds = ", ".join(f"{n}x {h}" for h, n in sorted({h: used.count(h) for h in used}.items()))
    return Row(f"GGUF {wanted}", stored * 8 / count, pooled_db(case.tensors, decoded), mean, least, kinds)


def target_bytes(qpk: Path, target: str, keys: dict[str, Any]) -> int:
    """Code and parameter bytes of the compared tensors as export `target` stores them (Native.price)."""
    from qpack.converter.export import TARGETS
    from qpack.formats.qpk import CODECS

    native = TARGETS[target].native
    with qpack.open(qpk) as q:
        return sum(native.price(e.scheme, e.bits, e.shape, e.grouping, q.blobs[e.codes].length,
                                sum(q.blobs[i].length for i in e.params.values()), CODECS[q.blobs[e.codes].codec].name)
                   for e in q.entries if e.key in keys)


def qpack_side(case: Case, bpw: float, objective: str, side: str, tmp: Path) -> Row:
    """qpack's allocation of the same tensors within `bpw`, restored with `unpack` and run: the convert keywords live here."""
    qpk = tmp / "q.qpk"
    t = time.perf_counter()
    report = qpack.convert(case.path, qpk, target_bpw=bpw, codec="raw", objective=objective, compress="none",
                           include=[glob_escape(k) for k in case.tensors], keep=case.others, **SIDES[side])
    seconds = time.perf_counter() - t
    sqnr, stored, count = container_sqnr(qpk, case.tensors)
    if "target" in SIDES[side]:  # the bytes the export stores, not the container's
        stored = target_bytes(qpk, SIDES[side]["target"], case.tensors)
    if count != sum(a.size for a in case.tensors.values()):
        raise RuntimeError(f"{case.label}: the container holds {count:,} weights, not the compared tensors'")
    restored = tmp / "q.onnx"
    qpack.unpack(qpk, restored)
    mean, least = cosines(case, restored)
    settings = [f"{t['scheme']} {t['bits']} " + (f"b{t['block']}" if t["block"] else "ch" if t["axis"] is not None else "t")
                for t in report["tensors"] if t["key"] in case.tensors]
    note = ", ".join(f"{settings.count(s)}x {s}" for s in sorted(set(settings))) + f"; {seconds:.1f} s"
    return Row(f"qpack {side} {objective}", stored * 8 / count, sqnr, mean, least, note)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=[m.label for m in MODELS], help="labels of MODELS to run")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    try:
        have = f"gguf {md.version('gguf')}"
    except md.PackageNotFoundError:
        sys.exit("gguf is not installed: pip install -e '.[bench]'")
    import onnxruntime

    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, onnxruntime {onnxruntime.__version__}, {have}")
    for line in check_ports():
        print("  " + line, flush=True)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        for fx in MODELS:
            if fx.label not in args.models:
                continue
            path = model_path(fx)
            if path is None:
                print(f"\n{fx.label}: skipped, {fx.relpath} not installed ({fx.dist})")
                continue
            case = case_of(fx, path, args.samples)
            count = sum(a.size for a in case.tensors.values())
            print(f"\n{fx.label}: {len(case.tensors)} matrices, {count:,} weights: "
                  + ", ".join(f"{re.sub(r'^.*/', '', k)} {list(a.shape)}" for k, a in case.tensors.items()), flush=True)
            print("| side | bits/weight | weight SQNR dB | output cosine mean | least | types, widths |")
            print("|---|---|---|---|---|---|")
            rows = []
            for wanted in ("Q4_K", "Q4_0"):
                ref = gguf_side(case, wanted, tmp)
                rows.append(ref)
                print(f"| {ref.side} | {ref.bpw:.3f} | {ref.sqnr:.2f} | {ref.cos_mean:.5f} | {ref.cos_min:.5f} | {ref.note} |", flush=True)
                for side in SIDES:
                    for objective in OBJECTIVES:
                        r = qpack_side(case, ref.bpw, objective, side, tmp)
                        rows.append(r)
                        print(f"| {r.side} at {wanted}'s bits | {r.bpw:.3f} | {r.sqnr:.2f} | {r.cos_mean:.5f} | {r.cos_min:.5f} "
                              f"| {r.note} |", flush=True)
            results[fx.label] = {"weights": count, "rows": [r.__dict__ for r in rows]}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
