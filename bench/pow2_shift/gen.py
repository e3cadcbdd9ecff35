"""C tables for the pow2 reference inference of the digits sample, and the tools to build and run it.

    python bench/pow2_shift/gen.py --bits 4 --out build/pow2_shift

writes, in --out: `digits<B>.qpk` (the sample converted with pow2 per channel at B bits),
`weights.h` (that container's codes, per-channel emax and float biases, plus the fixed-point plan)
and `digits_test.bin` (the 540-image test split). Then `gcc -std=c99 -O2 -I OUT cnn.c -lm`.

Fixed-point plan of the two fixed-point variants, `shift` and `group` (cnn.c implements it;
`shift_forward` below is its exact model in numpy):

- Activations are int32 with F fractional bits, one F per activation tensor: the image, each
  layer's output, and the logits. Every layer input is non-negative (image in [0, 1], ReLU outputs),
  so `x << s` is well defined.
- A weight of output channel c is 0 or ±2^(base_c + s), base_c = emax_c - M + 1 the exponent of the
  smallest magnitude of the channel's window, s = m - 1 in 0..M-1. The accumulator of channel c
  holds `sum ±(x << s)` with F_in - base_c fractional bits: only left shifts, so the accumulation is
  exact, and its order does not matter (`group` adds the inputs of each exponent first and shifts
  their sum once). The float bias is rounded once to that scale.
- At the layer boundary each channel is rounded (half up) to the next activation's F by a right
  shift of F_in - base_c - F_out. That rounding, and the bias rounding, are the only places where
  the fixed-point variants lose precision against the float model.
- F is as large as int32 allows: for each layer, the largest partial-sum bound seen on the training
  split (|bias| + sum |w||x|, which bounds every partial sum in any order and grouping) times
  2^HEADROOM_BITS must stay below 2^31. A wider pow2 window costs activation bits one for one: 5-bit codes reach 8
  exponents further down than 4-bit ones, so their activations keep 8 fractional bits fewer.
  Inputs far outside the training data can overflow; the C code does not check (`shift_forward`
  does, and the tests run it on the test split).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from qpack.converter.convert import convert  # noqa: E402
from qpack.converter.policy import Policy  # noqa: E402
from qpack.formats.errors import QpackError  # noqa: E402
from qpack.formats.qpk import QpkReader  # noqa: E402
from qpack.formats.registry import open_model  # noqa: E402

HERE = Path(__file__).resolve().parent
SAMPLE = ROOT / "samples" / "digits_cnn.onnx"
C_SOURCE = HERE / "cnn.c"
CFLAGS = ("-std=c99", "-O2", "-Wall", "-Wextra", "-pedantic")
ACC_BITS = 31  # int32 accumulators: magnitudes below 2^31
HEADROOM_BITS = 2  # partial sums up to 4x the largest seen on the training split still fit

# What cnn.c hard-codes: the graph's op sequence, and each weight's C name and shape.
OPS = ["Conv", "Relu", "Conv", "Relu", "MaxPool", "Conv", "Relu", "MaxPool", "Flatten", "Gemm", "Relu", "Gemm"]
LAYERS = [("conv1", (16, 1, 3, 3)), ("conv2", (32, 16, 3, 3)), ("conv3", (64, 32, 3, 3)), ("fc1", (128, 256)), ("fc2", (10, 128))]
POOLED = {"conv2", "conv3"}


@dataclass(frozen=True)
class Layer:
    """One Conv or Gemm of the sample as the container stores it; weights flattened to [out, K]."""

    name: str  # the C name (conv1 ... fc2)
    tensor: str  # the weight's name in the container
    codes: NDArray[np.uint8]  # pow2 codes, C order of the ONNX weight
    emax: NDArray[np.int16]  # per output channel
    bias: NDArray[np.float32]  # kept in float by the container
    weights: NDArray[np.float32]  # the container's dequantized values, for the float reference

    @property
    def conv(self) -> bool:
        return self.name.startswith("conv")

    @property
    def relu(self) -> bool:
        return self.name != "fc2"


@dataclass(frozen=True)
class Tables:
    """Everything generated for one bit width."""

    bits: int
    qpk: Path
    header: Path
    inputs: Path
    layers: list[Layer]
    fracs: list[int]  # fractional bits of the image, each layer's output, the logits last


@dataclass(frozen=True)
class CRun:
    """What one run of the C program printed."""

    predictions: NDArray[np.int64]
    logits: NDArray[np.float64]
    pass_ns: list[int]  # wall time of each timed pass over all images
    pass_cpu_ns: list[int]  # CPU time of the same passes


def top(bits: int) -> int:
    """M = 2^(bits-1) - 1: the largest magnitude code; the code's top bit is the sign."""
    return (1 << (bits - 1)) - 1


def window_base(layer: Layer, bits: int) -> NDArray[np.int64]:
    """Per output channel, the exponent of the smallest non-zero magnitude: emax - M + 1."""
    return layer.emax.astype(np.int64) - top(bits) + 1


def convert_sample(out: Path, bits: int, model: Path = SAMPLE) -> Path:
    """`qpack convert MODEL --bits B --scheme pow2 --per-channel -o OUT`, through the library."""
    convert(open_model(model), Policy("pow2", bits, per_channel=True), out)
    return out


def load_layers(qpk: Path) -> list[Layer]:
    """The five weighted layers of the sample, read from its container.

    Raises:
        QpackError: the container holds another model than the one cnn.c hard-codes.
    """
    import onnx
    from onnx import numpy_helper

    with QpkReader(qpk) as r:
        graph = onnx.ModelProto()
        graph.ParseFromString(r.graph())
        ops = [n.op_type for n in graph.graph.node]
        if ops != OPS:
            raise QpackError(f"{qpk}: graph ops {ops}, cnn.c implements {OPS}")
        entries = {e.name: e for e in r.entries}
        inits = {i.name: i for i in graph.graph.initializer}
        layers = []
        weighted = [n for n in graph.graph.node if n.op_type in ("Conv", "Gemm")]
        for node, (name, shape) in zip(weighted, LAYERS):
            e = entries.get(node.input[1])
            if e is None or e.shape != shape or e.scheme != "pow2" or e.grouping.axis != 0 or e.grouping.block is not None:
                got = "kept in float" if e is None else f"{e.scheme} {list(e.shape)} axis {e.grouping.axis}"
                raise QpackError(f"{qpk}: {name} weight '{node.input[1]}' is {got}; cnn.c needs pow2 {list(shape)} per channel")
            if node.op_type == "Gemm" and [(a.name, a.i) for a in node.attribute if a.name == "transB"] != [("transB", 1)]:
                raise QpackError(f"{qpk}: {name} is a Gemm without transB=1")
            bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
            codes = r.codes(e).reshape(shape[0], -1)
            layers.append(Layer(name, e.name, np.ascontiguousarray(codes), r.params(e)["emax"].copy(), bias,
                                r.dequantize(e).reshape(shape[0], -1)))
        bits = {int(e.bits) for e in r.entries}
    if len(bits) != 1:
        raise QpackError(f"{qpk}: tensors at several widths {sorted(bits)}; cnn.c takes one")
    return layers


def _im2col(a: NDArray) -> NDArray:
    """[N, C, H, W] -> [N, C*9, H*W], 3x3 patches with zero padding 1, rows in (c, ky, kx) order like the kernel."""
    n, c, h, w = a.shape
    p = np.pad(a, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.stack([p[:, :, ky : ky + h, kx : kx + w] for ky in range(3) for kx in range(3)], axis=2)
    return cols.reshape(n, c * 9, h * w)


def _pool(a: NDArray) -> NDArray:
    n, c, h, w = a.shape
    return a.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def _layer_input(layer: Layer, a: NDArray) -> NDArray:
    """The layer's inputs as [N, K, P]: patches for a convolution, the flattened vector (P = 1) for a dense layer."""
    return _im2col(a) if layer.conv else a.reshape(len(a), -1, 1)


def _layer_output(layer: Layer, y: NDArray, side: int) -> NDArray:
    """[N, out, P] -> the next layer's input: [N, out, side, side] after the optional 2x2 max pool."""
    if not layer.conv:
        return y[:, :, 0]
    y = y.reshape(len(y), -1, side, side)
    return _pool(y) if layer.name in POOLED else y


def float_forward(layers: list[Layer], images: NDArray) -> tuple[NDArray[np.float64], list[NDArray[np.float64]]]:
    """Logits of the dequantized model in float64, and per layer the largest partial-sum bound of each channel.

    The bound of output channel c at pixel p is |b_c| + sum_k |w_ck| |x_kp|: no partial sum, in any
    order, exceeds it. Returned as its maximum over images and pixels.
    """
    a = images.astype(np.float64)
    bounds = []
    for layer in layers:
        side = a.shape[-1] if layer.conv else 1
        x = _layer_input(layer, a)
        w = layer.weights.astype(np.float64)
        b = layer.bias.astype(np.float64)[None, :, None]
        bound = np.matmul(np.abs(w), np.abs(x)) + np.abs(b)
        bounds.append(bound.max(axis=(0, 2)))
        y = np.matmul(w, x) + b
        a = _layer_output(layer, np.maximum(y, 0) if layer.relu else y, side)
    return a, bounds


def plan_fracs(layers: list[Layer], bits: int, calibration: NDArray) -> list[int]:
    """Fractional bits of every activation (image, each layer's output; the last entry is the logits').

    Each layer's input gets the most bits for which its accumulators, in units of the channel's
    smallest weight, stay below 2^(31 - HEADROOM_BITS) on `calibration`. The logits get the
    accumulator precision of the coarsest output channel, so every final shift is a right shift.
    """
    _, bounds = float_forward(layers, calibration)
    fracs: list[int] = []
    for layer, bound in zip(layers, bounds):
        base = window_base(layer, bits)
        # acc = real * 2^(F - base) < 2^(31 - headroom)  <=>  F <= base + 31 - headroom - ceil(log2 real)
        fit = int(np.min(base + ACC_BITS - HEADROOM_BITS - np.ceil(np.log2(np.maximum(bound, 2.0**-30)))))
        if fracs:
            # rounding to F_out must be a right shift in every channel of the previous layer
            fit = min(fit, fracs[-1] - int(window_base(layers[len(fracs) - 1], bits).max()))
        fracs.append(fit)
    fracs.append(fracs[-1] - int(window_base(layers[-1], bits).max()))
    if min(fracs) < 0:
        raise QpackError(f"no fixed-point plan fits int32 at {bits} bits: fractional bits {fracs}")
    return fracs


def fixed_tables(layer: Layer, bits: int, f_in: int, f_out: int) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """The fixed-point view of a layer: signed weights ±2^s (0 for zero codes), accumulator biases, final right shifts."""
    m = (layer.codes & top(bits)).astype(np.int64)
    sign = np.where(layer.codes >> (bits - 1), -1, 1)
    w = np.where(m > 0, sign * np.left_shift(1, np.maximum(m - 1, 0)), 0)
    acc_frac = f_in - window_base(layer, bits)
    # floor(b * 2^acc_frac + 0.5) in float64, as cnn.c computes it: exact for float32 biases
    bias = np.floor(np.ldexp(layer.bias.astype(np.float64), acc_frac) + 0.5).astype(np.int64)
    return w, bias, acc_frac - f_out


def _round_shift(v: NDArray[np.int64], r: NDArray[np.int64]) -> NDArray[np.int64]:
    """floor((v + 2^(r-1)) / 2^r) per channel (axis 1), v unchanged where r is 0: cnn.c's round_shift."""
    half = np.where(r > 0, np.left_shift(1, np.maximum(r - 1, 0)), 0)[None, :, None]
    return np.right_shift(v + half, r[None, :, None])


def shift_forward(layers: list[Layer], bits: int, fracs: list[int], images: NDArray) -> NDArray[np.int64]:
    """cnn.c's fixed-point variants (shift and group), exactly, in int64: logits with fracs[-1] fractional bits.

    Raises:
        QpackError: a partial sum could leave int32 on these images (cnn.c would overflow).
    """
    limit = 1 << ACC_BITS
    a = np.floor(images.astype(np.float64) * 2.0 ** fracs[0] + 0.5).astype(np.int64)
    for i, layer in enumerate(layers):
        side = a.shape[-1] if layer.conv else 1
        x = _layer_input(layer, a)
        w, bias, shift = fixed_tables(layer, bits, fracs[i], fracs[i + 1])
        # float64 (BLAS) sums integers exactly below 2^53, far beyond the int32 range checked here
        wf, xf = w.astype(np.float64), x.astype(np.float64)
        worst = np.matmul(np.abs(wf), xf).astype(np.int64) + np.abs(bias)[None, :, None]
        if worst.max() + (1 << max(int(shift.max()) - 1, 0)) >= limit:
            raise QpackError(f"{layer.name}: a partial sum reaches {int(worst.max())}, beyond int32")
        acc = np.matmul(wf, xf).astype(np.int64) + bias[None, :, None]
        y = _round_shift(acc, shift)
        a = _layer_output(layer, np.maximum(y, 0) if layer.relu else y, side)
    return a


def _c_array(ctype: str, name: str, values: NDArray, per_line: int = 24) -> str:
    if values.dtype.kind == "f":
        items = [float(v).hex() + "f" for v in values.ravel()]
        per_line = 6
    else:
        items = [str(int(v)) for v in values.ravel()]
    lines = [", ".join(items[i : i + per_line]) for i in range(0, len(items), per_line)]
    body = ",\n    ".join(lines)
    return f"static const {ctype} {name}[{len(items)}] = {{\n    {body}\n}};\n"


def write_header(path: Path, layers: list[Layer], bits: int, fracs: list[int], source: str) -> Path:
    """weights.h: the container's codes, emax and biases per layer, and the activations' fractional bits."""
    parts = [
        "/* Generated by bench/pow2_shift/gen.py; do not edit. */\n",
        f"/* {source}: pow2 codes at {bits} bits, per output channel; biases as the container keeps them (float32). */\n",
        f"#define QP_BITS {bits}\n\n",
        "/* fractional bits of the fixed-point activations: image, conv1, conv2, conv3, fc1 outputs, logits */\n",
        _c_array("int", "qp_frac", np.array(fracs)),
    ]
    for layer in layers:
        parts.append(f"\n/* {layer.name}: '{layer.tensor}' {list(layer.codes.shape)} */\n")
        parts.append(_c_array("uint8_t", f"{layer.name}_codes", layer.codes))
        parts.append(_c_array("int16_t", f"{layer.name}_emax", layer.emax))
        parts.append(_c_array("float", f"{layer.name}_bias", layer.bias))
    path.write_text("".join(parts))
    return path


def write_inputs(path: Path, images: NDArray[np.float32]) -> Path:
    """The images as cnn.c reads them: u32 count, u32 values per image, then float32 pixels (all little-endian)."""
    flat = np.ascontiguousarray(images.reshape(len(images), -1), dtype="<f4")
    path.write_bytes(np.array(flat.shape, dtype="<u4").tobytes() + flat.tobytes())
    return path


def digits_split() -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int64]]:
    """Training images (for calibration), test images and test labels of the sample's fixed split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from qpack.converter.datasets import digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    xtr, xte, _, _ = train_test_split(x, d.target, test_size=0.3, random_state=0, stratify=d.target)
    test, labels = digits()
    if not np.array_equal(xte, test):
        raise QpackError("the calibration split no longer matches converter.datasets.digits()")
    return xtr, test, labels


def generate(out: Path, bits: int) -> Tables:
    """Convert the sample at `bits`, and write the C header and the test split into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    qpk = convert_sample(out / f"digits{bits}.qpk", bits)
    layers = load_layers(qpk)
    train, test, _ = digits_split()
    fracs = plan_fracs(layers, bits, train)
    header = write_header(out / "weights.h", layers, bits, fracs, f"{SAMPLE.name} -> {qpk.name}")
    return Tables(bits, qpk, header, write_inputs(out / "digits_test.bin", test), layers, fracs)


def compile_c(tables: Tables, exe: Path, extra: tuple[str, ...] = (), block: int | None = None) -> Path:
    """gcc the reference with `weights.h` from `tables`, `block` pixels per inner loop (cnn.c's BLK);
    warnings are errors, so the source stays clean."""
    blk = () if block is None else (f"-DBLK={block}",)
    cmd = ["gcc", *CFLAGS, *extra, *blk, "-Werror", "-I", str(tables.header.parent), str(C_SOURCE), "-o", str(exe), "-lm"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise QpackError(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return exe


def run_c(exe: Path, variant: str, inputs: Path, passes: int = 0) -> CRun:
    """Run one variant ('float', 'shift' or 'group'): predictions and logits of every image, and `passes` timed passes."""
    done = subprocess.run([str(exe), variant, str(inputs), str(passes)], capture_output=True, text=True)
    if done.returncode:
        raise QpackError(f"{exe.name} {variant} failed ({done.returncode}): {done.stderr.strip()}")
    preds: list[int] = []
    logits: list[list[float]] = []
    times: dict[str, list[int]] = {"pass_ns": [], "pass_cpu_ns": []}
    for line in done.stdout.splitlines():
        head, *rest = line.split()
        if head in times:
            times[head] = [int(v) for v in rest]
        elif head != "check":
            preds.append(int(head))
            logits.append([float(v) for v in rest])
    return CRun(np.array(preds, np.int64), np.array(logits, np.float64), times["pass_ns"], times["pass_cpu_ns"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("build/pow2_shift"))
    args = ap.parse_args()
    t = generate(args.out, args.bits)
    print(f"{t.qpk}\n{t.header}\n{t.inputs}\nfractional bits (image, conv1..fc1, logits): {t.fracs}")
    print(f"build: gcc {' '.join(CFLAGS)} -I {args.out} {C_SOURCE} -o {args.out / 'cnn'} -lm")
    print(f"run:   {args.out / 'cnn'} float|shift|group {t.inputs} [PASSES]")


if __name__ == "__main__":
    main()
