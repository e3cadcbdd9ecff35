"""`qpack export --to c`: qpk.h decodes every scheme, width, grouping and parameter dtype
bit-exactly as QpkReader.dequantize, from compiled-in tables and from whole containers; its
container reader accepts good files and rejects damaged ones without a sanitizer report.

The C side is one driver program (tests/c/qpk_driver.c), compiled once per module with the strict
flags and once more with AddressSanitizer and UndefinedBehaviorSanitizer.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from typer.testing import CliRunner

from qpack.converter.cli import app
from qpack.converter.convert import convert
from qpack.converter.export import TARGETS, export, qpk_h
from qpack.converter.export.c import DTYPES as C_DTYPES
from qpack.converter.export.c import PARAM_DTYPES as C_PARAM_DTYPES
from qpack.converter.export.c import model_identifier, scheme_constant, tensor_constants, unpack_bytes
from qpack.converter.policy import Policy
from qpack.converter.quant import get_quantizer
from qpack.formats.errors import FormatError, OptionError, UnsupportedError
from qpack.formats.model import SourceModel
from qpack.formats.qpk import (
    ANS,
    RAW,
    SCHEMES,
    ZSTD,
    BlobKind,
    Codec,
    Grouping,
    ParamSpec,
    QpkReader,
    QpkWriter,
    SchemeSpec,
    TensorEntry,
    pack,
)
from qpack.formats.qpk import meta as qpk_meta
from qpack.formats.qpk import spec as qpk_spec
from qpack.formats.qpk.spec import DTYPE_SIZES, HEADER, HEADER_BODY, HEADER_SIZE, MAGIC, VERSION_MAJOR, align, expansion_limit
from qpack.formats.registry import open_model
from tests.stopping import stopped_at

# the schemes the C target runs, and qpk.h's constant for each
C_SCHEMES = {s: str(scheme_constant(s)) for s in TARGETS["c"].native.schemes or ()}

STRICT = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic"]
SANITIZED = [*STRICT, "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
DRIVER = Path(__file__).parent / "c" / "qpk_driver.c"
DECODER = Path(__file__).resolve().parent.parent / "converter" / "export" / "qpk.h"
QPK_E_BLOB, QPK_E_CODEC, QPK_E_PARAM = qpk_h.define("QPK_E_BLOB"), qpk_h.define("QPK_E_CODEC"), qpk_h.define("QPK_E_PARAM")

# qpk.h's constants that restate a rule of FORMAT.md (or a registry of qpack's), with the value the
# Python side gives each: a format change that misses qpk.h fails here
QPK_H_MIRRORS = {
    "QPK_FORMAT_MAJOR": VERSION_MAJOR, "QPK_MAX_RANK": qpk_spec.MAX_RANK, "QPK__MAX_DIM": qpk_spec.MAX_DIM,
    "QPK__MAX_ELEMENTS": qpk_spec.MAX_ELEMENTS, "QPK__MAX_GRAPH_BYTES": qpk_spec.MAX_GRAPH_BYTES, "QPK_MAX_DEPTH": qpk_spec.MAX_META_DEPTH,
    "QPK__MAX_ARRAY": qpk_spec.MAX_BLOBS, "QPK__MAX_MAP": 2 * qpk_spec.MAX_TENSORS,  # the Python reader's max_array_len, max_map_len
    "QPK__MAX_TENSORS": qpk_spec.MAX_TENSORS, "QPK__MAX_NAME": qpk_spec.MAX_NAME_LENGTH,
    "QPK__EMAX_MIN": qpk_spec.POW2_EMAX_MIN, "QPK__EMAX_MAX": qpk_spec.POW2_EMAX_MAX,
    "QPK_RAW": RAW.id, "QPK_ANS": ANS.id, "QPK__ANS_CONTEXTS": qpk_spec.ANS_MAX_CONTEXTS, "QPK__ANS_LOW": qpk_spec.ANS_STATE_LOW,
    "QPK__SCHEMES": len(C_SCHEMES),
}
# qpk.h's own: the C API's numbering (errors, schemes, dtypes, flags) and the decoder's workspace and
# tuning, which `--to c` reads from qpk.h (converter/export/qpk_h.py)
QPK_H_OWN = {"QPK_OK", "QPK_OPEN_TRUST_BLOBS", "QPK__ANS_SUMS", "QPK__ANS_BUCKET_BITS", *C_SCHEMES.values(), *C_DTYPES.values()}


def _dtype_variants(spec: SchemeSpec) -> list[tuple[tuple[str, str], ...]]:
    """The parameter dtypes a tensor of the scheme may record: none (the defaults), then each alternative."""
    return [(), *(((p.name, d),) for p in spec.params for d in p.others)]


# every (scheme, bits, grouping kind, parameter dtypes) the format allows: 53 widths x 3 groupings
# (dq: 2, it has no blocks), with float16 scales and float32 codebooks beside the defaults
COMBOS = [(s, b, kind, dt) for s, spec in sorted(SCHEMES.items()) if s in ("asym", "sym", "pow2", "lut", "dq")
          for b in range(spec.min_bits, spec.max_bits + 1)
          for kind in (("tensor", "channel", "block") if spec.blocks else ("tensor", "channel"))
          for dt in _dtype_variants(spec)]
BLOCKS = (1, 2, 3, 5, 8, 16, 32, 64, 1000)  # most leave a short last block


# ---- building ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gcc() -> str:
    path = shutil.which("gcc")
    if path is None:
        pytest.skip("gcc is not installed: the C export cannot be compiled and tested")
    return path


def _compile(gcc: str, flags: list[str], out: Path, sources: list[Path], include: Path, *defines: str) -> Path:
    cmd = [gcc, *flags, f"-I{include}", *(f"-D{d}" for d in defines), "-o", str(out), *map(str, sources)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr}"
    return out


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("c")


@pytest.fixture(scope="module")
def reader_driver(gcc: str, build: Path) -> Path:
    """The driver's container modes (file, check), strict flags."""
    return _compile(gcc, STRICT, build / "driver", [DRIVER], DECODER.parent)


@pytest.fixture(scope="module")
def reader_driver_asan(gcc: str, build: Path) -> Path:
    return _compile(gcc, SANITIZED, build / "driver_asan", [DRIVER], DECODER.parent)


def _run(cmd: list[Any], timeout: float = 120) -> str:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd} exited {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r.stdout


def _weights(path: Path) -> list[tuple[str, str, np.ndarray, int | None, str]]:
    """(name, key, float32 values, channel axis, dtype) of a model's float weights with at least one dimension."""
    out = []
    for w in open_model(path).weights:
        if w.is_float and w.size > 0 and len(w.shape) >= 1:
            out.append((w.name, w.key, np.asarray(w.array, dtype=np.float32), w.axis, w.dtype))
    return out


def _grouping(kind: str, x: np.ndarray, axis: int | None, i: int, scheme: str = "", bits: int = 1) -> Grouping:
    if kind == "tensor":
        return Grouping()
    if kind == "channel":
        return Grouping(axis if axis is not None else i % x.ndim)
    block = BLOCKS[i % len(BLOCKS)]
    if scheme == "lut":  # 2^bits centroids a group: blocks of at least 2^(bits-2) keep the codebooks small
        block = max(block, 1 << max(0, bits - 2))
    return Grouping(i % x.ndim, block)


Tensor = tuple[str, str, tuple[int, ...], str, str, int, Grouping, np.ndarray, dict[str, Any]]  # params: array-likes


def _param_dtypes(scheme: str, params: dict[str, Any]) -> dict[str, str]:
    """The dtypes a tensor's parameters are stored in: an array whose dtype is one of the parameter's
    alternatives (float16 scales, float32 centroids, as quantize() returns them) keeps it; anything
    else (lists, float64 arrays) is stored in the scheme's default."""
    out = {}
    for p in SCHEMES[scheme].params:
        v = params[p.name]
        if isinstance(v, np.ndarray) and v.dtype.newbyteorder("<").str in p.others:
            out[p.name] = v.dtype.newbyteorder("<").str
    return out


def _write(path: Path, tensors: list[Tensor], fmt: str = "onnx", codec: Any = None) -> Path:
    """A container of the given (name, key, shape, dtype, scheme, bits, grouping, codes, params) tensors,
    each parameter in the dtype _param_dtypes picks (recorded in the entry's `param_dtypes`)."""
    entries = []
    with QpkWriter(path.parent) as w:
        for name, key, shape, dtype, scheme, bits, g, codes, params in tensors:
            c = w.add(pack(codes, bits), BlobKind.CODES, *([codec] if codec else []))
            other = _param_dtypes(scheme, params)
            dtypes = dict(SCHEMES[scheme].dtypes, **other)
            p = {k: w.add(np.asarray(params[k], dtype=d), BlobKind.PARAM) for k, d in dtypes.items()}
            entries.append(TensorEntry(name, key, shape, dtype, "matrix", scheme, bits, g, c, p, other or None))
        graph = w.add(b"graph", BlobKind.GRAPH)
        meta = qpk_meta.build("test", fmt, {"name": path.stem + "." + fmt, "bytes": 1}, {}, graph,
                              hashlib.sha256(b"graph").hexdigest(), entries, [])
        w.write(path, meta)
    return path


def _combo(e: TensorEntry) -> tuple[str, int, str, tuple[tuple[str, str], ...]]:
    """The COMBOS row a tensor entry realizes."""
    return e.scheme, e.bits, e.grouping.kind, tuple(sorted((e.param_dtypes or {}).items()))


def _quantized(weights: list[tuple[str, str, np.ndarray, int | None, str]], picks: list[tuple[int, int]],
               mse: bool = True) -> list[Tensor]:
    """Weight i quantized at combo c for each (i, c) in picks (every other one with MSE clipping); keys made unique."""
    out: list[Tensor] = []
    for j, (i, c) in enumerate(picks):
        name, key, x, axis, dtype = weights[i]
        scheme, bits, kind, dtypes = COMBOS[c]
        g = _grouping(kind, x, axis, i + c, scheme, bits)
        codes, params = get_quantizer(scheme).quantize(x, bits, g, "mse" if mse and j % 2 else "minmax", dict(dtypes))
        out.append((name, f"{key}#{j}", x.shape, dtype, scheme, bits, g, codes, params))
    return out


def _every_combo(path: Path, out: Path) -> Path:
    """Every weight of a model at every combo (min-max ranges: clipping changes no decoding rule, and costs)."""
    w = _weights(path)
    return _write(out, _quantized(w, [(i, c) for i in range(len(w)) for c in range(len(COMBOS))], mse=False), _fmt(path))


def _cycled(path: Path, out: Path) -> Path:
    """Each weight of a model once, combos taken in turn (all of them when there are enough weights)."""
    w = _weights(path)
    n = max(len(w), len(COMBOS))
    return _write(out, _quantized(w, [(i % len(w), i % len(COMBOS)) for i in range(n)]), _fmt(path))


def _fmt(path: Path) -> str:
    return "tflite" if path.suffix == ".tflite" else "onnx"


def _scale_limit(level: int) -> float:
    """The largest float32 scale whose product with `level` is finite in float32: a scale's upper
    edge where a code's |level| reaches `level` (FORMAT.md "Parameter ranges")."""
    s = np.float32(np.finfo(np.float32).max / level)
    with np.errstate(over="ignore"):
        while not np.isfinite(np.float32(level) * s):
            s = np.nextafter(s, np.float32(0))
        assert not np.isfinite(np.float32(level) * np.nextafter(s, np.float32(np.inf)))
    return float(s)


def _edge_tensors() -> list[Tensor]:
    """Shapes and parameters at the edges: scalar, empty, one weight, odd lengths at every width,
    pow2 exponents at both ends of their range (2^-149, a subnormal, to 2^127), subnormal,
    signed-zero and largest scales, and every finite float16 bit pattern as a scale and as a
    centroid (subnormals included)."""
    rng = np.random.default_rng(7)
    out: list[Tensor] = []

    def add(name: str, shape: tuple[int, ...], scheme: str, bits: int, g: Grouping, params: dict[str, Any],
            codes: np.ndarray | None = None) -> None:
        count = int(np.prod(shape, dtype=np.int64))
        if codes is None:
            codes = rng.integers(0, 1 << bits, count, dtype=np.uint8)
        out.append((name, f"edge:{len(out)}", shape, "float32", scheme, bits, g, codes.reshape(shape), params))

    def half(n: int) -> np.ndarray:
        return rng.standard_normal(n).astype(np.float16)

    add("scalar", (), "asym", 3, Grouping(), {"scale": [0.5], "zero_point": [3]})
    for g in (Grouping(), Grouping(1), Grouping(0, 2), Grouping(1, 2)):
        groups = g.count((0, 3))
        add(f"empty {g.kind}", (0, 3), "sym", 4, g, {"scale": np.ones(groups)})
    add("one", (1,), "pow2", 2, Grouping(0), {"emax": [3]})
    for bits in range(1, 9):
        params = {"scale": rng.random(28) + 0.01, "zero_point": rng.integers(0, 256, 28)}
        add(f"odd asym {bits}", (7, 13), "asym", bits, Grouping(1, 4), params)
    for bits in range(2, 9):
        add(f"odd sym {bits}", (13, 7), "sym", bits, Grouping(0), {"scale": rng.random(13)})
    emax = [qpk_spec.POW2_EMAX_MIN, -22, -1, 0, 1, 100, 126, qpk_spec.POW2_EMAX_MAX]
    for bits in (2, 5, 8):
        add(f"pow2 extremes {bits}", (len(emax), 1 << bits), "pow2", bits, Grouping(0), {"emax": emax},
            np.tile(np.arange(1 << bits, dtype=np.uint8), len(emax)))
    # asym at 3 bits: the largest |code - zero_point| is 7 for zero points 0 and 7, 128 and 255 for those
    zero_points = [0, 255, 3, 7, 1, 0, 2, 128, 4, 5, 7, 128]
    special = np.array([-0.0, 0.0, 1e-45, -1e-45, 1.17e-38, -2.5, 0.75, 3e30, _scale_limit(4), -_scale_limit(7),
                        _scale_limit(7), -_scale_limit(128)], np.float32)
    add("asym specials", (len(special), 9), "asym", 3, Grouping(0), {"scale": special, "zero_point": zero_points})
    sym_special = np.array([-0.0, 0.0, 1e-45, -1e-45, 1.17e-38, -2.5, _scale_limit(4), -_scale_limit(4)], np.float32)
    add("sym specials", (9, len(sym_special)), "sym", 3, Grouping(1), {"scale": sym_special})
    add("dq largest scale", (2, 9), "dq", 16, Grouping(0), {"scale": np.array([_scale_limit(1 << 16), -1e-45], np.float32)},
        np.array([65535, 0, 1, 32767, 32768, 65535, 0, 65534, 3] * 2, np.uint16))

    # float16 parameters: every one of the 63,488 finite bit patterns, as a scale and as a centroid
    halves = np.arange(1 << 16).astype(np.uint16).view(np.float16)
    halves = halves[np.isfinite(halves)]
    n = halves.size
    add("asym float16 scales", (n, 2), "asym", 2, Grouping(0), {"scale": halves, "zero_point": rng.integers(0, 4, n)})
    add("sym float16 scales", (3, n), "sym", 2, Grouping(1), {"scale": halves})
    add("lut float16 centroids", (n // 256, 256), "lut", 8, Grouping(0), {"centroids": halves},
        np.tile(np.arange(256, dtype=np.uint8), n // 256))
    f32 = np.array([0x33800000, 0x80000001, 0x7F7FFFFE, 0x80000000, 0, 1, 0x807FFFFF, 0x00800000, 0x7F7FFFFF,
                    0xFF7FFFFF, 0x3F800000, 0xBFC00000, 0x00000002, 0x4B000000, 0xC2F60000, 0x3F000000], np.uint32).view(np.float32)
    add("lut float32 specials", (4, 16), "lut", 4, Grouping(), {"centroids": f32}, np.tile(np.arange(16, dtype=np.uint8), 4))
    add("scalar lut", (), "lut", 1, Grouping(), {"centroids": np.array([1.5, -2], np.float16)})
    add("scalar float16 scale", (), "sym", 5, Grouping(), {"scale": np.array([2**-24], np.float16)})
    for g in (Grouping(), Grouping(1), Grouping(0, 2), Grouping(1, 2)):
        add(f"empty lut {g.kind}", (0, 3), "lut", 3, g, {"centroids": half(8 * g.count((0, 3)))})
    for bits in range(1, 9):
        k = 1 << bits
        centroids = half(28 * k) if bits % 2 else half(28 * k).astype(np.float32) / 3  # float16, or float32 ones
        add(f"odd lut {bits}", (7, 13), "lut", bits, Grouping(1, 4), {"centroids": centroids})
        add(f"odd lut channel {bits}", (13, 3), "lut", bits, Grouping(0), {"centroids": half(13 * k)})
        add(f"odd asym float16 {bits}", (5, 11), "asym", bits, Grouping(0, 2),
            {"scale": (rng.random(33) / 50).astype(np.float16), "zero_point": rng.integers(0, 1 << bits, 33)})
    return out


def _hostile_names() -> list[Tensor]:
    """Names a C string literal must escape, and one longer than C99 promises a literal can be."""
    names = ['we"ird\\name??=??/\n\t\0*/ end', "é€𝄞 utf-8", "x" * 5000]
    codes = np.arange(6, dtype=np.uint8).reshape(2, 3)
    return [(n, f"hostile:{i}", (2, 3), "float16", "sym", 3, Grouping(), codes, {"scale": [0.25]}) for i, n in enumerate(names)]


def _out_of_range_tensors() -> list[Tensor]:
    """One tensor per way a parameter can leave its range (FORMAT.md "Parameter ranges"), each
    beside values within it: NaN and infinite scales and centroids (float32 and float16), scales one
    step past their edge, and pow2 exponents just outside -23..127 and at int16's ends."""
    nan, inf = float("nan"), float("inf")

    def above(level: int) -> float:
        return float(np.nextafter(np.float32(_scale_limit(level)), np.float32(inf)))

    cases: list[tuple[str, str, int, dict[str, Any]]] = [
        ("nan scale", "asym", 3, {"scale": [1.0, nan], "zero_point": [0, 0]}),
        ("inf scale", "sym", 4, {"scale": [0.5, inf]}),
        ("-inf float16 scale", "dq", 4, {"scale": np.array([1, -inf], np.float16)}),
        ("nan float16 scale", "asym", 2, {"scale": np.array([1, nan], np.float16), "zero_point": [1, 1]}),
        ("sym scale past its edge", "sym", 3, {"scale": [1.0, above(4)]}),
        ("asym scale past its edge at zero point 255", "asym", 2, {"scale": [1.0, above(255)], "zero_point": [0, 255]}),
        ("dq scale past its edge", "dq", 16, {"scale": [1.0, -above(1 << 16)]}),
        ("emax 128", "pow2", 2, {"emax": [0, 128]}),
        ("emax -24", "pow2", 8, {"emax": [0, -24]}),
        ("emax 32767", "pow2", 5, {"emax": [0, 32767]}),
        ("emax -32768", "pow2", 3, {"emax": [0, -32768]}),
        ("nan centroid", "lut", 2, {"centroids": np.array([0, 1, 2, 3, 4, nan, 6, 7], np.float16)}),
        ("inf float32 centroid", "lut", 1, {"centroids": np.array([0, 1, -inf, 3], np.float32)}),
    ]
    rng = np.random.default_rng(5)
    return [(name, f"bad:{i}", (2, 3), "float32", scheme, bits, Grouping(0),
             rng.integers(0, 1 << bits, (2, 3)).astype(np.uint16 if bits > 8 else np.uint8), params)
            for i, (name, scheme, bits, params) in enumerate(cases)]


def _python_floats(path: Path) -> list[bytes]:
    with QpkReader(path) as q:
        return [q.dequantize(e).astype("<f4").tobytes() for e in q.entries]


def _assert_same(path: Path, c_bytes: bytes, names: list[str] | None = None) -> None:
    """C's floats, all tensors concatenated, equal Python's bit for bit (signed zeros and subnormals included)."""
    expected = _python_floats(path)
    pos = 0
    with QpkReader(path) as q:
        for e, ref in zip(q.entries, expected):
            got = c_bytes[pos : pos + len(ref)]
            if got != ref:
                a, b = np.frombuffer(got, "<u4"), np.frombuffer(ref, "<u4")
                k = int(np.flatnonzero(a != b)[0]) if a.size == b.size else -1
                pytest.fail(f"tensor {e.name!r} ({e.scheme}, {e.bits} bits, {e.grouping}): element {k} is "
                            f"{a[k]:#010x} in C, {b[k]:#010x} in Python")
            pos += len(ref)
    assert pos == len(c_bytes)


def _decode_file(driver: Path, path: Path, tmp: Path) -> tuple[bytes, list[int]]:
    """The driver's qpk_open + qpk_get_tensor + qpk_decode_tensor of a container: floats and per-tensor codes."""
    out = tmp / (path.stem + ".c.f32")
    lines = _run([driver, "file", path, out]).split("\n")
    rcs = [int(line.split()[1]) for line in lines if line and not line.startswith("open")]
    assert lines[-2] == "open 0"
    return out.read_bytes(), rcs


def _decode_table(gcc: str, flags: list[str], qpk: Path, tmp: Path, driver: Path | None = None, to: str = "c") -> bytes:
    """Export a container to C (`to`: c or c-coded), compile its table with the driver, and decode
    every tensor from it (ans streams through qpk_unpack).

    With `driver` (an object file holding the decoder) the arrays are built with
    -DQPK_NO_IMPLEMENTATION and linked to it; without, `<model>_weights.c` compiles the decoder.
    """
    src = tmp / (qpk.stem + "_" + to.replace("-", "_"))
    written, _ = export(qpk, to, src)
    exe = tmp / (qpk.stem + "_table")
    if driver is None:
        _compile(gcc, flags, exe, [DRIVER, written[2]], src, "QPK_DRIVER_TABLE")
    else:
        obj = _compile(gcc, [*flags, "-c"], tmp / (qpk.stem + "_weights.o"), [written[2]], src, "QPK_NO_IMPLEMENTATION")
        _compile(gcc, flags, exe, [driver, obj], src)
    out = tmp / (qpk.stem + ".table.f32")
    need = _run([exe, "table", out]).split()[-1]  # the largest qpk_unpack workspace, as the C side computes it
    header = written[1].read_text()
    assert f"_UNPACK_BYTES {need if to == 'c-coded' else 0}u" in header, (need, to)
    return out.read_bytes()


@pytest.fixture(scope="module")
def table_driver(gcc: str, build: Path) -> Path:
    """The driver's table mode with the decoder, as an object to link exported arrays to (strict flags)."""
    return _compile(gcc, [*STRICT, "-c"], build / "table_driver.o", [DRIVER], DECODER.parent, "QPK_DRIVER_TABLE", "QPK_IMPLEMENTATION")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, sample: Path, ocr_cls: Path, tfl_fp16: Path) -> dict[str, Path]:
    """Real-model containers: every weight of the sample at every combo; each weight of the PaddleOCR
    classifier and the float16 MediaPipe detector at combos in turn; edge cases."""
    d = tmp_path_factory.mktemp("qpk")
    return {"sample_all": _every_combo(sample, d / "sample_all.qpk"), "sample": _cycled(sample, d / "sample.qpk"),
            "ocr_cls": _cycled(ocr_cls, d / "ocr_cls.qpk"), "tfl_fp16": _cycled(tfl_fp16, d / "tfl_fp16.qpk"),
            "edge": _write(d / "edge.qpk", _edge_tensors() + _hostile_names())}


# ---- decoding --------------------------------------------------------------------------------------

def test_combos_cover_the_scheme_table():
    # asym (1..8) and sym (2..16) with float32 or float16 scales, pow2, lut with float16 or float32 centroids;
    # dq (2..16) with either scale, per tensor or per channel
    assert len(COMBOS) == (8 * 2 + 15 * 2 + 7 + 8 * 2) * 3 + 15 * 2 * 2
    assert {s for s, *_ in COMBOS} == set(C_SCHEMES) == set(SCHEMES) == {"asym", "sym", "pow2", "lut", "dq"}


def test_qpk_h_constants_match_the_python_side():
    """Every `#define` of qpk.h is read, and each is either held to the value Python gives it or
    named as qpk.h's own; the names `--to c` writes are qpk.h's."""
    d = qpk_h.defines()
    assert set(d) == set(re.findall(r"^#define[ \t]+(QPK\w*)", qpk_h.source(), re.M)) - {"QPK_H", "QPK_IMPLEMENTATION_DONE"}
    errors = {k for k in d if k.startswith("QPK_E_")}
    assert set(d) == QPK_H_MIRRORS.keys() | QPK_H_OWN | errors and not QPK_H_MIRRORS.keys() & (QPK_H_OWN | errors)
    assert {k: d[k] for k in QPK_H_MIRRORS} == QPK_H_MIRRORS
    assert d["QPK_OK"] == 0 and sorted(d[k] for k in errors) == list(range(-len(errors), 0))
    assert sorted(d[v] for v in C_SCHEMES.values()) == list(range(d["QPK__SCHEMES"]))
    assert sorted(d[v] for v in C_DTYPES.values()) == list(range(len(qpk_spec.FLOAT_DTYPES)))
    assert set(C_PARAM_DTYPES.values()) <= set(C_DTYPES.values())
    # a context for every magnitude sum a window of codes up to a byte wide can hold (qpk_unpack's ctx_of)
    assert d["QPK__ANS_SUMS"] > qpk_spec.ANS_MAX_WINDOW * ((1 << qpk_spec.BYTE_BITS) - 1)
    assert d["QPK__ANS_BUCKET_BITS"] <= qpk_spec.ANS_PRECISION


def test_qpk_h_reader_takes_c_integer_constants_only():
    src = "#define QPK_A (-3)\n#define QPK_B (UINT64_C(1) << 40) /* why */\n#define QPK_C 16u\n#define QPK_G\n  #define QPK_X 1\n"
    assert qpk_h.parse_defines(src) == {"QPK_A": -3, "QPK_B": 1 << 40, "QPK_C": 16}
    for bad in ("sizeof(int)", "QPK_A + 1", "1.5", '"text"'):
        with pytest.raises(ValueError, match="QPK_D"):
            qpk_h.parse_defines(f"#define QPK_D {bad}\n")


@pytest.mark.parametrize("name", ["sample_all", "ocr_cls", "tfl_fp16", "edge"])
def test_container_reader_decodes_bit_exactly(models: dict[str, Path], reader_driver: Path, tmp_path: Path, name: str):
    path = models[name]
    with QpkReader(path) as q:
        seen = {_combo(e) for e in q.entries}
    if name != "edge":  # every scheme, width, grouping and parameter dtype, on this model's weights, except
        # float16 scales asked for where some block's step at 12+ bits lies below float16's range (stored as float32)
        missing = set(COMBOS) - seen
        assert all(s == "sym" and b >= 12 and dict(dt) == {"scale": "<f2"} for s, b, _, dt in missing), missing
    data, rcs = _decode_file(reader_driver, path, tmp_path)
    assert set(rcs) == {0}
    _assert_same(path, data)


@pytest.mark.parametrize("name", ["sample", "ocr_cls", "tfl_fp16", "edge"])
def test_exported_tables_decode_bit_exactly(models: dict[str, Path], gcc: str, table_driver: Path, tmp_path: Path, name: str):
    """The exported arrays compile warning-free under -Wall -Wextra -Werror -pedantic and decode as Python does."""
    _assert_same(models[name], _decode_table(gcc, STRICT, models[name], tmp_path, table_driver))


def test_sources_clean_under_extra_warnings(models: dict[str, Path], gcc: str, tmp_path: Path):
    """What firmware builds often add: conversions, shadowing, casts, prototypes; and qpk.h as C++."""
    written, _ = export(models["edge"], "c", tmp_path / "src")
    extra = ["-Wconversion", "-Wsign-conversion", "-Wshadow", "-Wcast-qual", "-Wcast-align", "-Wstrict-prototypes",
             "-Wmissing-prototypes", "-Wundef", "-Wdouble-promotion", "-Wfloat-equal", "-Wvla", "-c"]
    _compile(gcc, STRICT + extra, tmp_path / "w.o", [written[2]], written[0].parent)
    gxx = shutil.which("g++")
    if gxx:
        cpp = tmp_path / "qpk.cc"
        cpp.write_text('#define QPK_IMPLEMENTATION\n#include "qpk.h"\n')
        _compile(gxx, ["-std=c++11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-c"], tmp_path / "cpp.o", [cpp], written[0].parent)


def test_exported_tables_under_sanitizers(models: dict[str, Path], gcc: str, reader_driver_asan: Path, tmp_path: Path):
    """The default build: `<model>_weights.c` compiles the decoder itself; and the edge cases read
    from the container, under the same sanitizers."""
    _assert_same(models["edge"], _decode_table(gcc, SANITIZED, models["edge"], tmp_path))
    data, rcs = _decode_file(reader_driver_asan, models["edge"], tmp_path)
    assert set(rcs) == {0}
    _assert_same(models["edge"], data)


def test_converted_containers(gcc: str, reader_driver: Path, table_driver: Path, sample: Path, tfl_fp16: Path, tmp_path: Path):
    """Containers from the real pipeline, float16 scales and codebooks among them, decoded from the
    container in memory and from the exported tables; with zstd-coded codes the C reader says so,
    the export writes them packed. (The pipeline stores codebooks as float16 whatever --param-dtype
    says: float32 ones are built directly, in COMBOS and the edge cases.)"""
    from qpack.formats.onnx_model import OnnxModel
    from qpack.formats.tflite_model import TfliteModel

    runs: list[tuple[SourceModel, Policy, Codec]] = [(OnnxModel(sample), Policy("asym", 1, per_channel=True), RAW),
                                                     (OnnxModel(sample), Policy("pow2", 8), RAW),
                                                     (TfliteModel(tfl_fp16), Policy("sym", 2, per_channel=True), ZSTD),
                                                     (OnnxModel(sample), Policy("asym", 3, group_size=16), RAW),
                                                     (OnnxModel(sample), Policy("sym", 4, group_size=32), RAW),
                                                     (OnnxModel(sample), Policy("lut", 3, per_channel=True), RAW),
                                                     (OnnxModel(sample), Policy("lut", 2, group_size=32), RAW),
                                                     (TfliteModel(tfl_fp16), Policy("lut", 4, group_size=64), ZSTD)]
    dtypes = set()
    for i, (model, policy, codec) in enumerate(runs):
        qpk = tmp_path / f"conv{i}.qpk"
        convert(model, policy, qpk, codec=codec)
        with QpkReader(qpk) as q:
            zstd = [q.blobs[e.codes].codec == ZSTD.id for e in q.entries]
            dtypes |= {(e.scheme, *sorted(e.dtypes.items())) for e in q.entries}
        data, rcs = _decode_file(reader_driver, qpk, tmp_path)
        assert rcs == [QPK_E_CODEC if z else 0 for z in zstd]
        if not any(zstd):
            _assert_same(qpk, data)
        _assert_same(qpk, _decode_table(gcc, STRICT, qpk, tmp_path, table_driver))
    assert {("asym", ("scale", "<f2"), ("zero_point", "<u1")), ("sym", ("scale", "<f2")), ("lut", ("centroids", "<f2"))} <= dtypes


def test_out_of_range_parameters_refused_by_both_readers(reader_driver_asan: Path, tmp_path: Path):
    """Each way a parameter can leave its range (FORMAT.md "Parameter ranges"), in group 1 of its
    tensor: qpk_get_tensor gives QPK_E_PARAM for the tensor, the Python reader a FormatError naming
    the tensor, the parameter and the group, before any value is used; the tensor in range beside
    them decodes alike in both, and verify() refuses the file."""
    good: Tensor = ("good", "good:0", (2, 3), "float32", "sym", 3, Grouping(0), np.array([[4, 5, 6], [2, 1, 0]], np.uint8),
                    {"scale": [1.0, 2.0]})
    bad = _out_of_range_tensors()
    path = _write(tmp_path / "bad.qpk", [good, *bad])
    data, rcs = _decode_file(reader_driver_asan, path, tmp_path)
    assert rcs == [0] + [QPK_E_PARAM] * len(bad)
    with QpkReader(path) as q:
        assert data == q.dequantize(q.entries[0]).astype("<f4").tobytes()
        assert q.dequantize(q.entries[0]).tolist() == [[1, 2, 3], [-2, -4, -6]]
        for e in q.entries[1:]:
            param = "scale" if e.scheme == "asym" else next(iter(e.params))
            with pytest.raises(FormatError, match=f"tensor '{re.escape(e.name)}': parameter '{param}' of group 1[ :(]"):
                q.dequantize(e)
            with pytest.raises(FormatError, match="parameter"):
                q.blob_bytes(e.params[param], BlobKind.PARAM)  # no path hands out an unchecked parameter
        with pytest.raises(FormatError, match="tensor 'nan scale': parameter 'scale'"):
            q.verify()


def test_decoder_refuses_out_of_range_descriptors(gcc: str, tmp_path: Path):
    """Descriptors built by hand (not read by qpk_open): qpk_params_check refuses each out-of-range
    parameter, and the decoders refuse it when they reach its group (a centroid, when a code reads
    it), so no NaN or infinity comes out; the group before it decodes, and parameters at the edges
    of their ranges pass everywhere."""
    def f32(*v: float) -> str:
        return ", ".join(f"0x{b:02x}" for b in np.array(v, "<f4").tobytes())

    def f16(*v: float) -> str:
        return ", ".join(f"0x{b:02x}" for b in np.array(v, "<f2").tobytes())

    def i16(*v: int) -> str:
        return ", ".join(f"0x{b:02x}" for b in np.array(v, "<i2").tobytes())

    above = float(np.nextafter(np.float32(_scale_limit(255)), np.float32(np.inf)))
    # (name, scheme, bits, parameter field, its bytes, extra fields, expected: check, whole, group 0, group 1)
    cases = [
        ("nan scale", "QPK_SYM", 4, "scale", f32(1, np.nan), "", "bad"),
        ("inf float16 scale", "QPK_DQ", 4, "scale", f16(1, np.inf), ".scale_dtype = QPK_FLOAT16,", "bad"),
        ("asym scale past its edge at zero point 255", "QPK_ASYM", 2, "scale", f32(1, above), ".zero_point = zp255,", "bad"),
        ("the same scale at zero point 0", "QPK_ASYM", 2, "scale", f32(1, above), ".zero_point = zp0,", "good"),
        ("sym scale at its edge", "QPK_SYM", 16, "scale", f32(1, -_scale_limit(1 << 15)), "", "good"),
        ("emax 128", "QPK_POW2", 4, "emax", i16(0, 128), "", "bad"),
        ("emax -24", "QPK_POW2", 8, "emax", i16(0, -24), "", "bad"),
        ("emax at both ends", "QPK_POW2", 8, "emax", i16(qpk_spec.POW2_EMAX_MAX, qpk_spec.POW2_EMAX_MIN), "", "good"),
        ("nan centroid", "QPK_LUT", 1, "centroids", f16(1, 2, 3, np.nan), ".centroids_dtype = QPK_FLOAT16,", "bad"),
        ("inf float32 centroid", "QPK_LUT", 1, "centroids", f32(1, 2, 4, -np.inf), ".centroids_dtype = QPK_FLOAT32,", "bad"),
    ]
    body = []
    for i, (_, scheme, bits, field, data, extra, _) in enumerate(cases):
        count = 4
        codes = np.full(count, (1 << bits) - 1, np.uint32)  # every code the top one: each reads centroid 1 of its group
        packed = pack(codes.astype(np.uint16 if bits > 8 else np.uint8), bits)
        body.append(f"    {{ static const uint8_t p[] = {{{data}}}, c[] = {{{', '.join(str(b) for b in packed)}}};\n"
                    f"      qpk_tensor t = {{.ndim = 2, .shape = shape, .count = {count}, .scheme = {scheme}, .bits = {bits}, "
                    f".axis = 0, .groups = 2, .codes = c, .codes_len = sizeof c, .{field} = p, {extra}}};\n"
                    f"      report({i}, &t); }}")
    source = f"""#define QPK_IMPLEMENTATION
#include "qpk.h"
#include <stdio.h>
static const uint32_t shape[2] = {{2, 2}};
static const uint8_t zp0[2] = {{0, 0}}, zp255[2] = {{0, 255}};
static void report(int i, const qpk_tensor *t)
{{
    float out[4];
    int whole = qpk_decode_tensor(t, out), g0 = qpk_decode_range(t, 0, 2, out), g1 = qpk_decode_range(t, 2, 2, out);
    printf("%d %d %d %d %d\\n", i, qpk_params_check(t), whole, g0, g1);
}}
int main(void)
{{
{chr(10).join(body)}
    return 0;
}}
"""
    src = tmp_path / "descriptors.c"
    src.write_text(source)
    exe = _compile(gcc, SANITIZED, tmp_path / "descriptors", [src], DECODER.parent)
    rows = [list(map(int, line.split())) for line in _run([exe]).split("\n")[:-1]]
    want = {"bad": [QPK_E_PARAM, QPK_E_PARAM, 0, QPK_E_PARAM], "good": [0, 0, 0, 0]}
    assert {case[0]: row[1:] for case, row in zip(cases, rows)} == {case[0]: want[case[-1]] for case in cases}


def _stream_kind(stream: bytes | memoryview) -> tuple[str, bool, bool]:
    """(model, profile tables, codes past a byte) of an ans stream, from its head."""
    return ("contexts" if stream[3] & 0x7F else "order 0"), bool(stream[3] & 0x80), stream[1] > 8


@pytest.fixture(scope="module")
def ans_models(tmp_path_factory: pytest.TempPathFactory, sample: Path) -> list[Path]:
    """The sample converted with its codes entropy-coded, as a goal writes them: between them,
    order-0 and context streams, weight and profile tables, codes of 3..12 bits."""
    from qpack.formats.onnx_model import OnnxModel

    tmp = tmp_path_factory.mktemp("ans")
    runs = [Policy("asym", 3, per_channel=True), Policy("dq", 5), Policy("sym", 12), Policy("pow2", 4),
            Policy("lut", 3, group_size=32), Policy("sym", 6, group_size=64, param_dtype="fp16")]
    paths = []
    for i, policy in enumerate(runs):
        paths.append(tmp / f"ans{i}.qpk")
        convert(OnnxModel(sample), policy, paths[-1], codec=ANS)
    return paths


def test_ans_containers_decode_bit_exactly(ans_models: list[Path], reader_driver_asan: Path, tmp_path: Path):
    """qpk_unpack decodes every kind of ans stream the pipeline writes into the codes Python reads:
    the floats are bit for bit Python's, under the sanitizers."""
    kinds = set()
    for qpk in ans_models:
        with QpkReader(qpk) as q:
            kinds |= {_stream_kind(q.blob_view(e.codes, BlobKind.CODES)) for e in q.entries if q.blobs[e.codes].codec == ANS.id}
        data, rcs = _decode_file(reader_driver_asan, qpk, tmp_path)
        assert set(rcs) == {0}
        _assert_same(qpk, data)
    assert {k[0] for k in kinds} == {"order 0", "contexts"} and {k[1] for k in kinds} == {k[2] for k in kinds} == {False, True}


def test_exported_tables_keep_ans_streams_with_c_coded(ans_models: list[Path], gcc: str, table_driver: Path, tmp_path: Path):
    """`--to c-coded` keeps ans streams in the arrays (the container's bytes, fewer than packed
    codes) and the table decodes them through qpk_unpack to Python's floats; `--to c` writes them
    packed, as before."""
    for qpk in ans_models:
        _assert_same(qpk, _decode_table(gcc, STRICT, qpk, tmp_path, table_driver, to="c-coded"))
        _assert_same(qpk, _decode_table(gcc, STRICT, qpk, tmp_path, table_driver))
    qpk = ans_models[0]
    coded, notes = export(qpk, "c-coded", tmp_path / "coded")
    packed, _ = export(qpk, "c", tmp_path / "packed")
    with QpkReader(qpk) as q:
        n = sum(q.blobs[e.codes].codec == ANS.id for e in q.entries)
        need = max(unpack_bytes(e) for e in q.entries if q.blobs[e.codes].codec == ANS.id)
    source = coded[2].read_text()
    assert source.count("QPK_ANS") == n and f"DIGITS_CNN_UNPACK_BYTES {need}u" in coded[1].read_text()
    assert "DIGITS_CNN_UNPACK_BYTES 0u" in packed[1].read_text() and "QPK_ANS" not in packed[2].read_text()
    assert coded[2].stat().st_size < packed[2].stat().st_size and any("qpk_unpack" in line for line in notes)


def test_c_coded_refuses_a_corrupt_stream(ans_models: list[Path], tmp_path: Path):
    """A stream that breaks the format's rules (checksum fixed) fails the export, not the device."""
    with QpkReader(ans_models[0]) as q:
        e = next(e for e in q.entries if q.blobs[e.codes].codec == ANS.id)
        stream = bytes(q.blob_view(e.codes, BlobKind.CODES))
    bad = _with_blob(ans_models[0], e.codes, stream[:-2], tmp_path / "bad.qpk")
    with pytest.raises(FormatError):
        export(bad, "c-coded", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written


def _with_blob(path: Path, index: int, stored: bytes, out: Path) -> Path:
    """`path` with blob `index` replaced by `stored` (its length and checksum updated, the payload
    laid out again), written to `out`: what reaches a reader is the stream, not a checksum error."""
    with QpkReader(path) as q:
        meta = msgpack.unpackb(msgpack.packb(q.meta, use_bin_type=True), raw=False)
        blobs = [bytes(q.blob_view(i, b.kind)) for i, b in enumerate(q.blobs)]
    blobs[index] = stored
    payload = bytearray()
    for row, data in zip(meta["blobs"], blobs):
        payload += bytes(align(len(payload)) - len(payload))
        row[2], row[3], row[5] = len(payload), len(data), hashlib.sha256(data).digest()
        payload += data
    out.write_bytes(_assemble(msgpack.packb(meta, use_bin_type=True), bytes(payload)))
    return out


def test_corrupt_ans_streams_get_python_verdicts(ans_models: list[Path], reader_driver_asan: Path, tmp_path: Path):
    """Each kind of stream truncated, extended and flipped (header, model, tables, state, words),
    checksums fixed so that the stream itself is read: qpk_unpack refuses exactly what Python
    refuses and decodes the rest to Python's floats, with no sanitizer report."""
    rng = np.random.default_rng(0)
    paths: list[Path] = []
    seen = set()
    for qpk in ans_models:
        with QpkReader(qpk) as q:
            streams = [(e.codes, bytes(q.blob_view(e.codes, BlobKind.CODES))) for e in q.entries if q.blobs[e.codes].codec == ANS.id]
        for index, stream in streams:
            if _stream_kind(stream) in seen:
                continue
            seen.add(_stream_kind(stream))
            n = len(stream)
            variants = [stream[:cut] for cut in sorted({0, 1, 3, 4, 5, 8, 9, 12, n // 2, n - 4, n - 3, n - 2, n - 1})]
            variants += [stream + b"\0", stream + b"\0\0", stream + b"\xff\xff"]
            for pos in [*range(min(n, 48)), *rng.integers(48, n, 16).tolist()] if n > 48 else range(n):
                for flip in (0x01, 0x80, 0xFF):
                    variants.append(stream[:pos] + bytes([stream[pos] ^ flip]) + stream[pos + 1:])
            paths += [_with_blob(qpk, index, v, tmp_path / f"m{len(paths) + i}.qpk") for i, v in enumerate(variants)]
    assert len(seen) >= 5
    c = _c_verdicts(reader_driver_asan, paths)
    py = [_python_verdict(p) for p in paths]
    assert c == py
    assert 0 < sum(v == "reject" for v in py) < len(py)  # both refusals and streams that still decode


# ---- the exporter ------------------------------------------------------------------------------------

def test_export_is_deterministic_and_ships_the_decoder(models: dict[str, Path], tmp_path: Path):
    a, _ = export(models["edge"], "c", tmp_path / "a")
    b, _ = export(models["edge"], "c", tmp_path / "b")
    assert [p.name for p in a] == ["qpk.h", "edge_weights.h", "edge_weights.c"]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))
    assert a[0].read_bytes() == DECODER.read_bytes()
    header = a[1].read_text()
    assert "EDGE_T_SCALAR = 0," in header and "EDGE_MAX_COUNT 190464u" in header  # sym float16 scales: 3 x 63,488 weights
    assert "extern const qpk_tensor qpk_tensors[];" in header and "extern const size_t qpk_tensor_count;" in header


def test_model_identifier():
    assert model_identifier("digits_cnn.onnx") == "digits_cnn"
    assert model_identifier("face-detection short.tflite") == "face_detection_short"
    assert model_identifier("3d.unet.onnx") == "m_3d_unet"
    assert model_identifier("../../évil\\x.onnx") == "x"
    assert model_identifier("....") == "model"
    # no run of underscores, none in front; the prefixes qpk.h and <stdint.h> keep for their macros (QPK_,
    # INT..._C) taken with an `m_`; 32 characters at most
    assert [model_identifier(n) for n in ("qpk.onnx", "Qpk_e.onnx", "int8.tflite", "Interp.onnx", "uint.onnx", "size.onnx",
                                          "__a__b__.onnx", "é.onnx", "1abc.onnx", "x" * 40 + ".onnx", "1" + "b" * 28 + "_yz.onnx")] == \
        ["m_qpk", "m_Qpk_e", "m_int8", "m_Interp", "m_uint", "size", "a_b", "model", "m_1abc", "x" * 32, "m_1" + "b" * 28]


def test_tensor_constants_unique():
    def entry(name: str) -> TensorEntry:
        return TensorEntry(name, name, (1,), "float32", "", "sym", 2, Grouping(), 0, {})

    # names that meet: the first keeps the plain form, the others take their index (and a count after it
    # where that is some tensor's name too); an empty one, its index
    names = ["a", "A_2", "a", "a.2", "tensor count", "", "Conv", "conv", "a__2", "5", "2", "a_2_2", "a"]
    got = tensor_constants([entry(n) for n in names], "m")
    assert got == ["M_T_A", "M_T_A_2", "M_T_A_2_3", "M_T_A_2_3_2", "M_T_TENSOR_COUNT", "M_T_5", "M_T_CONV", "M_T_CONV_7",
                   "M_T_A_2_8", "M_T_5_9", "M_T_2", "M_T_A_2_2", "M_T_A_12"]
    # 63 characters at most, a suffix taking the place of the name's end
    long = tensor_constants([entry("w" * 300), entry("W" * 299 + ".")], "model_of_thirty_two_characters_x")
    assert long == ["MODEL_OF_THIRTY_TWO_CHARACTERS_X_T_" + "W" * 28, "MODEL_OF_THIRTY_TWO_CHARACTERS_X_T_" + "W" * 26 + "_1"]


def _export_stopped_at(point: int, qpk: Path, out: Path) -> int:
    """`export(qpk, "c", out)` stopped before line `point` of the export's path (converter/export/c.py
    and formats/atomic.py): the child's exit status (143 when stopped, 0 when the export finished first), -1 if it hangs."""
    from qpack.converter.export import c as c_export
    from qpack.formats import atomic

    return stopped_at(point, {atomic.__file__, c_export.__file__}, lambda: export(qpk, "c", out), 20)


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()} if folder.exists() else {}


def test_a_stop_anywhere_in_an_export_leaves_one_whole_set(tmp_path: Path):
    """A stop before any line of `--to c` leaves the folder holding the old files or the new ones,
    never a new header beside an old source, nor a temporary file; the firmware's own files are
    kept. Into a folder of its own, the export leaves the three files or no folder."""
    codes = np.arange(12, dtype=np.uint8).reshape(3, 4) % 8
    sets = {}
    for which, names in (("old", ["a", "b"]), ("new", ["a", "c", "d"])):
        (tmp_path / which).mkdir()
        tensors: list[Tensor] = [(n, f"k:{n}", (3, 4), "float32", "sym", 3 + i, Grouping(), codes, {"scale": [0.5 + i]})
                                 for i, n in enumerate(names)]
        sets[which] = _write(tmp_path / which / "m.qpk", tensors)  # model "m" both times: the same three file names
        export(sets[which], "c", tmp_path / which / "c")
    old, new = _hashes(tmp_path / "old" / "c"), _hashes(tmp_path / "new" / "c")
    assert old.keys() == new.keys() == {"qpk.h", "m_weights.h", "m_weights.c"} and old != new
    seen = {"kept": set(), "fresh": set()}
    for case in seen:
        for point in range(5000):
            out = tmp_path / f"{case}{point}" / "fw"
            out.parent.mkdir()
            if case == "kept":
                shutil.copytree(tmp_path / "old" / "c", out)
                (out / "main.c").write_text("int main(void) { return 0; }\n")
            code = _export_stopped_at(point, sets["new"], out)
            assert code in (143, 0), (case, point, code)
            left = _hashes(out)
            if case == "kept":
                assert left.pop("main.c", None) is not None
                assert left in (old, new), (point, sorted(left))
            else:
                assert left in ({}, new), (point, sorted(left))
                assert out.exists() == bool(left)
            assert [p.name for p in out.parent.iterdir()] in ([], ["fw"]), (point, list(out.parent.iterdir()))
            seen[case].add("new" if left == new else "old")  # old: as before the export (no folder, when fresh)
            if code == 0:
                break
        else:
            pytest.fail("the export never finished")
        assert point > 100 and seen[case] == {"old", "new"}, (case, point, seen)


def test_export_refusals(models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    taken = tmp_path / "file"
    taken.write_text("x")
    with pytest.raises(OptionError, match="exists and is not a folder"):
        export(models["edge"], "c", taken)
    assert taken.read_text() == "x"
    # a scheme registered by someone else has no C decoder
    monkeypatch.setitem(SCHEMES, "toy", SchemeSpec("toy", 1, 8, SCHEMES["sym"].params, lambda b: 1 << b, SCHEMES["sym"].decode))
    codes = np.zeros((2, 2), np.uint8)
    qpk = _write(tmp_path / "toy.qpk", [("t", "k", (2, 2), "float32", "toy", 2, Grouping(), codes, {"scale": [1.0]})])
    with pytest.raises(UnsupportedError, match="no C decoder"):
        export(qpk, "c", tmp_path / "toy")
    assert not (tmp_path / "toy").exists()
    # a parameter dtype qpk.h does not read, had the scheme table gained one
    sym = SCHEMES["sym"]
    scale = ParamSpec("scale", "<f4", others=("<f2", "<f8"))
    monkeypatch.setitem(SCHEMES, "sym", SchemeSpec("sym", 2, 8, (scale,), sym.levels, sym.decode))
    qpk = _write(tmp_path / "f8.qpk", [("t", "k", (2, 2), "float32", "sym", 2, Grouping(), codes, {"scale": np.ones(1, "<f8")})])
    with pytest.raises(UnsupportedError, match="stored as '<f8' has no C decoder"):
        export(qpk, "c", tmp_path / "f8")
    assert not (tmp_path / "f8").exists()


def test_cli_export(models: dict[str, Path], tmp_path: Path):
    runner = CliRunner()
    r = runner.invoke(app, ["export", str(models["sample"]), "--to", "c", "-o", str(tmp_path / "fw")])
    assert r.exit_code == 0, r.output
    assert "sample_weights.c" in r.output and (tmp_path / "fw" / "qpk.h").is_file()
    (tmp_path / "f").write_text("")
    r = runner.invoke(app, ["export", str(models["sample"]), "--to", "c", "-o", str(tmp_path / "f")])
    assert r.exit_code == 1 and "exists and is not a folder" in r.output and r.output.count("\n") == 1


def test_c_coded_of_a_packed_container_says_it_equals_c(sample: Path, tmp_path: Path):
    runner = CliRunner()
    qpk = tmp_path / "packed.qpk"
    assert runner.invoke(app, ["convert", str(sample), "-o", str(qpk), "--compress", "none", "-q"]).exit_code == 0
    plain = runner.invoke(app, ["export", str(qpk), "--to", "c", "-o", str(tmp_path / "c")])
    coded = runner.invoke(app, ["export", str(qpk), "--to", "c-coded", "-o", str(tmp_path / "cc")])
    assert plain.exit_code == coded.exit_code == 0, plain.output + coded.output
    assert "note:" not in plain.output
    for f in (tmp_path / "c").iterdir():
        assert (tmp_path / "cc" / f.name).read_bytes() == f.read_bytes()
    notes = [line for line in coded.output.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "equal those of --to c" in notes[0] and "--codec ans" in notes[0], coded.output


# ---- names: tensor names as C identifiers ----------------------------------------------------------------

C_KEYWORDS = ("auto break case char const continue default do double else enum extern float for goto if inline int long "
              "register restrict return short signed sizeof static struct switch typedef union unsigned void volatile while "
              "_Bool _Complex _Imaginary _Alignas _Alignof _Atomic _Generic _Noreturn _Static_assert _Thread_local "
              "alignas alignof bool constexpr false nullptr static_assert thread_local true typeof typeof_unqual").split()
NAMES_DRIVER = Path(__file__).parent / "c" / "names_driver.c"
IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9]*(_[A-Za-z0-9]+)*")  # no leading underscore, no run of them
STDINT_FUTURE = re.compile(r"U?INT\w*_(MAX|MIN|C|WIDTH)")  # kept for <stdint.h>'s macros (C99 7.26.8, C23 7.33.14)


@pytest.fixture(scope="module")
def header_macros(gcc: str, tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every macro <stdint.h>, <stddef.h>, <limits.h> and qpk.h define, as gcc's C99, GNU C17 (POSIX's
    limits too) and C2x modes have them."""
    src = tmp_path_factory.mktemp("macros") / "headers.c"
    src.write_text('#include <stdint.h>\n#include <stddef.h>\n#include <limits.h>\n#include "qpk.h"\n')
    names: set[str] = set()
    for std in ("c99", "gnu17", "c2x"):
        out = _run([gcc, f"-std={std}", "-D_GNU_SOURCE", "-dM", "-E", f"-I{DECODER.parent}", src])
        names |= {line.split()[1].split("(")[0] for line in out.splitlines() if line.startswith("#define ")}
    assert {"INT_LEAST8_MAX", "INT_FAST16_MAX", "SIG_ATOMIC_MAX", "SIZE_MAX", "NULL", "offsetof", "CHAR_BIT", "QPK_OK"} <= names
    return names


def _hostile_c_names(macros: set[str], short: bool = False) -> list[str]:
    """Tensor names that meet C's words once mapped: keywords; the header's own constants; the
    macros of <stdint.h>, <stddef.h>, <limits.h> and qpk.h as they are, lowercased and without their
    first word (INT_LEAST8_MAX: least8_max); names that map to one identifier; a 300-character name;
    non-ASCII ones. `short`: the macros' tails only."""
    names = [*C_KEYWORDS, "weights_h", "tensor_count", "max_count", "unpack_bytes", "t", "t_weights_h", "T_MAX_COUNT"]
    for m in sorted(macros):
        if not m.startswith("_"):
            names += [m.split("_", 1)[-1].lower()] if short else [m, m.lower(), m.split("_", 1)[-1].lower()]
    names += ["Conv.W", "conv_w", "conv-w", "CONV__W", "conv w", "_conv_w_", "conv_w_1", "conv_w_2", "conv.w.1"]
    names += ["w" * 300, "w" * 299 + "x", "é", "ü", "重み", "😀 1", "naïve/层", "...", "__", "_T_X", "__STDC__"]
    return list(dict.fromkeys(names))  # initializer names are unique


def _named_model(path: Path, names: list[str], large: set[str]) -> Path:
    """An ONNX model of one MatMul per initializer, named `names`; those in `large` big enough for
    ans to code them (64 x 32 weights, the others 8 x 4)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    inits, nodes, outputs = [], [], []
    for i, name in enumerate(names):
        rows, cols = (64, 32) if name in large else (8, 4)
        inits.append(numpy_helper.from_array(rng.standard_normal((rows, cols)).astype(np.float32), name))
        nodes.append(helper.make_node("MatMul", [f"x{rows}", name], [f"y{i}"]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, cols]))
    inputs = [helper.make_tensor_value_info(f"x{n}", TensorProto.FLOAT, [1, n]) for n in (8, 64)]
    graph = helper.make_graph(nodes, "names", inputs, outputs, inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture(scope="module")
def names_decoder(gcc: str, build: Path) -> dict[str, Path]:
    """qpk.h's code as an object, with the strict flags and with the sanitizers."""
    src = build / "qpk_impl.c"
    src.write_text('#define QPK_IMPLEMENTATION\n#include "qpk.h"\n')
    return {"strict": _compile(gcc, [*STRICT, "-c"], build / "impl.o", [src], DECODER.parent),
            "sanitized": _compile(gcc, [*SANITIZED, "-c"], build / "impl_asan.o", [src], DECODER.parent)}


def _check_names(header: str, n: int, macros: set[str]) -> tuple[str, list[str]]:
    """The header's model prefix and tensor constants, each name it defines held to the scheme."""
    guard = re.search(r"^#ifndef (\w+)$", header, re.M)
    assert guard is not None
    prefix = guard.group(1).removesuffix("_WEIGHTS_H")
    tensors = re.findall(r"^    (\w+) = \d+,", header, re.M)
    tag = re.findall(r"^enum (\w+) \{", header, re.M)
    defined = [guard.group(1), *re.findall(r"^#define (\w+)", header, re.M), *re.findall(r"^    (\w+) = \d+,?", header, re.M), *tag]
    assert len(tensors) == n and len(set(tensors)) == n
    assert all(t.startswith(prefix + "_T_") for t in tensors)
    assert len(tag) == 1 and tag[0].upper() == prefix + "_TENSOR"
    assert set(defined) - set(tensors) == {f"{prefix}_{s}" for s in ("WEIGHTS_H", "MAX_COUNT", "UNPACK_BYTES", "TENSOR_COUNT")} | set(tag)
    for name in defined:
        assert IDENTIFIER.fullmatch(name) and len(name) <= 63, name
        assert name not in macros and name not in C_KEYWORDS and not STDINT_FUTURE.fullmatch(name), name
    return prefix, tensors


def _decode_by_names(gcc: str, decoder: Path, flags: list[str], qpk: Path, to: str, macros: set[str], src: Path) -> str:
    """Export `qpk` (`to`: c or c-coded) into `src`, hold its names to the scheme, and check that the
    driver, looking every tensor up by its constant, decodes the floats Python reads; returns the header."""
    written, _ = export(qpk, to, src)
    with QpkReader(qpk) as q:
        n = len(q.entries)
    prefix, tensors = _check_names(written[1].read_text(), n, macros)
    (src / "list.inc").write_text("".join(f"NAME({t}, {i})\n" for i, t in enumerate(tensors)))
    defines = [f'NAMES_HEADER="{written[1].name}"', 'NAMES_LIST="list.inc"', "QPK_NO_IMPLEMENTATION",
               *(f"NAMES_{s}={prefix}_{s}" for s in ("TENSOR_COUNT", "MAX_COUNT", "UNPACK_BYTES"))]
    exe = _compile(gcc, flags, src / "names", [NAMES_DRIVER, written[2], decoder], src, *defines)
    _run([exe, src / "floats"])
    _assert_same(qpk, (src / "floats").read_bytes())
    return written[1].read_text()


def test_tensor_names_as_c_identifiers(gcc: str, names_decoder: dict[str, Path], header_macros: set[str], tmp_path: Path):
    """Tensor names that are C keywords, macros of the standard headers and of qpk.h (as they are,
    lowercased, and as the rest of one after a model prefix), the header's own constants, names that
    map to one identifier, 300 characters, non-ASCII: the header compiles under -std=c99 -Wall -Wextra
    -Werror -pedantic and under the sanitizers, every name it defines is an identifier C leaves to
    programs (63 characters at most), and a driver that looks each tensor up by its constant decodes
    Python's floats; for models whose own names are such words too."""
    from qpack.formats.onnx_model import OnnxModel

    names = _hostile_c_names(header_macros)
    large = {"unpack_bytes", "max_count", "int", "least8_max", "w" * 300}
    qpk = tmp_path / "int.qpk"
    convert(OnnxModel(_named_model(tmp_path / "int.onnx", names, large)), Policy("asym", 4), qpk, codec=ANS)
    with QpkReader(qpk) as q:
        assert [e.name for e in q.entries] == names
        assert sum(q.blobs[e.codes].codec == ANS.id for e in q.entries) >= 3  # a workspace to size
    for to in ("c", "c-coded"):
        for build, flags in (("strict", STRICT), ("sanitized", SANITIZED)):
            header = _decode_by_names(gcc, names_decoder[build], flags, qpk, to, header_macros, tmp_path / f"{to}_{build}")
    for want in ("M_INT_T_WEIGHTS_H = ", "M_INT_T_UNPACK_BYTES = ", "M_INT_T_LEAST8_MAX = ", "M_INT_T_INT = ",
                 "#define M_INT_UNPACK_BYTES ", "#ifndef M_INT_WEIGHTS_H"):
        assert want in header
    assert re.search(r"M_INT_UNPACK_BYTES [1-9]\d*u", header)

    short = _hostile_c_names(header_macros, short=True)
    for i, model in enumerate(("uint8", "Qpk", "sig", "1abc", "stdint", "for", "_Bool", "weights", "m_t", "é" * 3 + "x" * 200)):
        qpk = tmp_path / f"short{i}.qpk"
        convert(OnnxModel(_named_model(tmp_path / f"{model}.onnx", short, set())), Policy("sym", 3), qpk)
        _decode_by_names(gcc, names_decoder["strict"], STRICT, qpk, "c", header_macros, tmp_path / f"short{i}")


# ---- the container reader against damaged and hostile files ------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small container with each scheme, grouping and parameter dtype, for mutation runs."""
    rng = np.random.default_rng(3)
    tensors: list[Tensor] = []
    for i, (scheme, bits, g, shape, dtypes) in enumerate(
            [("asym", 3, Grouping(0), (3, 5), {}), ("sym", 5, Grouping(1, 3), (4, 7), {}), ("pow2", 2, Grouping(), (9,), {}),
             ("asym", 8, Grouping(1, 2), (2, 3), {}), ("asym", 4, Grouping(1, 2), (2, 5), {"scale": "<f2"}),
             ("lut", 2, Grouping(0), (3, 4), {}), ("lut", 3, Grouping(), (6,), {"centroids": "<f4"})]):
        x = rng.standard_normal(shape).astype(np.float32)
        codes, params = get_quantizer(scheme).quantize(x, bits, g, dtypes=dtypes)
        tensors.append((f"t{i}", f"init:t{i}", shape, "float32", scheme, bits, g, codes, params))
    return _write(tmp_path_factory.mktemp("tiny") / "tiny.qpk", tensors)


def test_truncated_and_flipped_containers_rejected(tiny: Path, reader_driver_asan: Path):
    """Every truncation and every bit flip in the header and metadata (a stride through the payload)
    is refused; metadata mutated with both checksums fixed reaches the parser: no sanitizer report."""
    line = _run([reader_driver_asan, "fuzz", tiny], timeout=300)
    cut, flip, meta = (tuple(map(int, part.split("/"))) for part in line.split()[1::2])
    assert cut[0] == 0 and cut[1] > 500
    assert flip[0] == 0 and flip[1] > 5000
    assert 0 < meta[0] < meta[1]  # some mutations stay valid (a character of a name), most do not


def _assemble(meta: bytes, payload: bytes, **header: int) -> bytes:
    """A container around `meta` and `payload` with consistent offsets and checksums, unless overridden."""
    off = align(HEADER_SIZE + len(meta))
    fields = {"major": VERSION_MAJOR, "minor": 0, "flags": 0, "meta_len": len(meta), "payload_off": off, "payload_len": len(payload)}
    fields.update(header)
    body = HEADER_BODY.pack(MAGIC, fields["major"], fields["minor"], fields["flags"], fields["meta_len"], fields["payload_off"],
                            fields["payload_len"], hashlib.sha256(meta).digest())
    return HEADER.pack(*HEADER_BODY.unpack(body), zlib.crc32(body), bytes(4)) + meta + bytes(off - HEADER_SIZE - len(meta)) + payload


def _python_verdict(path: Path) -> str:
    """'reject', or the SHA-256 of every tensor's floats, the C driver's `check` line."""
    try:
        with QpkReader(path) as q:
            for i, blob in enumerate(q.blobs):
                q.blob_view(i, blob.kind)
            if q.blobs[q.graph_index].codec == RAW.id:  # its checksum; a zstd graph's needs zstd, which qpk.h has not
                q.graph()
            data = b"".join(q.dequantize(e).astype("<f4").tobytes() for e in q.entries)
    except FormatError:
        return "reject"
    return hashlib.sha256(data).hexdigest()


def _c_verdicts(driver: Path, paths: list[Path]) -> list[str]:
    lines = _run([driver, "check", *paths], timeout=300).split("\n")[:-1]
    return ["reject" if line.split()[0] != "0" else line.split()[1] for line in lines]


def _raw_map(pairs: list[tuple[Any, Any]]) -> bytes:
    """A msgpack map written pair by pair (so a key can repeat)."""
    p = msgpack.Packer(use_bin_type=True)
    return p.pack_map_header(len(pairs)) + b"".join(p.pack(k) + p.pack(v) for k, v in pairs)


def _hostile_metas(meta: dict[str, Any]) -> Iterator[tuple[str, bytes]]:
    """(what, metadata bytes) cases; each must get the same verdict from C and Python."""

    def edit(fn: Callable[[dict[str, Any]], None]) -> bytes:
        m = msgpack.unpackb(msgpack.packb(meta, use_bin_type=True), raw=False)
        fn(m)
        return msgpack.packb(m, use_bin_type=True)

    def tensor(key: str, value: Any, i: int = 1) -> Callable[[dict[str, Any]], None]:
        return lambda m: m["tensors"][i].__setitem__(key, value)

    def drop(key: str, i: int = 1) -> Callable[[dict[str, Any]], None]:
        return lambda m: m["tensors"][i].pop(key)

    def blob(i: int, field: int, value: Any) -> Callable[[dict[str, Any]], None]:
        return lambda m: m["blobs"][i].__setitem__(field, value)

    cases: dict[str, Callable[[dict[str, Any]], None]] = {
        "unchanged": lambda m: None,
        "axis missing (per tensor)": drop("axis", 2),
        "block nil": tensor("block", None, 0),
        "float and int keys in options": lambda m: m["options"].update({"f": 1.5, 3: [None, True, b"x"]}),
        "bits 0": tensor("bits", 0), "bits 9": tensor("bits", 9), "sym at 1 bit": tensor("bits", 1),
        "bits true": tensor("bits", True), "bits as float": tensor("bits", 5.0), "bits as str": tensor("bits", "5"),
        "axis = rank": tensor("axis", 2), "axis -1": tensor("axis", -1), "block 0": tensor("block", 0),
        "block without axis": lambda m: m["tensors"][1].update(axis=None), "block -2": tensor("block", -2),
        "huge block": tensor("block", 2**64 - 1),
        # tensor 2 (pow2, 9 weights, per tensor) as one block along its axis: valid while the block is under 2^40
        "block 2^40 - 1": lambda m: m["tensors"][2].update(axis=0, block=2**40 - 1),
        "block 2^40": lambda m: m["tensors"][2].update(axis=0, block=2**40),
        "block 2^63": lambda m: m["tensors"][2].update(axis=0, block=2**63),
        "a tensor's blobs named by another": lambda m: m["tensors"].append(dict(m["tensors"][0], key="init:copy")),
        "graph checksum wrong": lambda m: m.__setitem__("graph_sha256", "0" * 64),
        "graph checksum in capitals": lambda m: m.__setitem__("graph_sha256", m["graph_sha256"].upper()),
        "graph checksum missing": lambda m: m.pop("graph_sha256"),
        "graph checksum as bin": lambda m: m.__setitem__("graph_sha256", bytes.fromhex(m["graph_sha256"])),
        # msgpack's caps: arrays of up to MAX_BLOBS items, maps of up to 2 x MAX_TENSORS pairs, anywhere
        "an array of 4,000,001 items": lambda m: m.__setitem__("kept", [None] * qpk_spec.MAX_BLOBS),
        "an array of 4,000,002 items": lambda m: m.__setitem__("kept", [None] * (qpk_spec.MAX_BLOBS + 1)),
        "a map of 2,000,000 pairs": lambda m: m.__setitem__("options", dict.fromkeys(range(2 * qpk_spec.MAX_TENSORS))),
        "a map of 2,000,001 pairs": lambda m: m.__setitem__("options", dict.fromkeys(range(2 * qpk_spec.MAX_TENSORS + 1))),
        "extra parameter": tensor("params", {"scale": 4, "zero_point": 5}), "parameter missing": tensor("params", {}),
        "parameter index negative": tensor("params", {"scale": -1}), "parameter index huge": tensor("params", {"scale": 2**63}),
        "parameter blob is codes": tensor("params", {"scale": 3}), "codes index out of range": tensor("codes", 99),
        "codes blob is a parameter": tensor("codes", 4), "codes index nil": tensor("codes", None),
        "shape negative": tensor("shape", [-4, 7]), "shape 17 dims": tensor("shape", [1] * 17),
        "shape dim 2^40": tensor("shape", [2**40, 1]), "shape count 2^48": tensor("shape", [2**24, 2**24]),
        "shape wrong count": tensor("shape", [4, 8]), "shape as map": tensor("shape", {"a": 1}),
        "dtype int8": tensor("dtype", "int8"), "scheme unknown": tensor("scheme", "toy"), "name missing": drop("name"),
        "name int": tensor("name", 5), "key empty": tensor("key", ""), "key 65537 chars": tensor("key", "é" * 65537),
        "key 65536 chars": tensor("key", "é" * 65536), "duplicate keys": tensor("key", "init:t0"),
        "entry not a map": lambda m: m["tensors"].__setitem__(1, [1, 2]),
        "tensors not a list": lambda m: m.__setitem__("tensors", {}), "tensors missing": lambda m: m.pop("tensors"),
        "blob row short": lambda m: m["blobs"][0].pop(), "blob sha 31 bytes": blob(0, 5, b"\0" * 31),
        "blob sha as str": blob(0, 5, "0" * 32), "blob misaligned": blob(1, 2, 65), "blob kind 3": blob(0, 0, 3),
        "blob codec 3": blob(0, 1, 3), "blob codec zstd": blob(0, 1, 1), "blob length negative": blob(0, 3, -1),
        "blob beyond payload": blob(1, 3, 2**62), "blob offset huge": blob(1, 2, 2**64 - 64),
        "blobs overlap": blob(1, 2, 0), "graph blob raw length differs": blob(-1, 4, 1), "blob table missing": lambda m: m.pop("blobs"),
        "graph index codes blob": lambda m: m.__setitem__("graph", 0), "graph index huge": lambda m: m.__setitem__("graph", 2**64 - 1),
        "graph missing": lambda m: m.pop("graph"), "format pytorch": lambda m: m.__setitem__("format", "pytorch"),
        "format missing": lambda m: m.pop("format"),
        # parameter dtypes (tensor 4: asym with float16 scales; 5: lut, float16 centroids; 6: lut, float32 ones)
        "param_dtypes nil": tensor("param_dtypes", None), "param_dtypes empty": tensor("param_dtypes", {}),
        "param_dtypes naming the default": tensor("param_dtypes", {"scale": "<f4"}),
        "float16 scale over float32 bytes": tensor("param_dtypes", {"scale": "<f2"}),
        "param_dtypes big-endian": tensor("param_dtypes", {"scale": ">f2"}),
        "param_dtypes float64": tensor("param_dtypes", {"scale": "<f8"}),
        "param_dtypes of another scheme": tensor("param_dtypes", {"centroids": "<f4"}),
        "param_dtypes without alternative": tensor("param_dtypes", {"zero_point": "<u1"}, 0),
        "param_dtypes of pow2": tensor("param_dtypes", {"emax": "<i4"}, 2),
        "param_dtypes as list": tensor("param_dtypes", ["scale", "<f2"]), "param_dtypes as str": tensor("param_dtypes", "<f2"),
        "param_dtypes value int": tensor("param_dtypes", {"scale": 2}),
        "param_dtypes value list": tensor("param_dtypes", {"scale": ["<f2"]}),
        "param_dtypes value bin": tensor("param_dtypes", {"scale": b"<f2"}),
        "param_dtypes key int": tensor("param_dtypes", {1: "<f2"}), "param_dtypes key bin": tensor("param_dtypes", {b"scale": "<f2"}),
        "float16 scales undeclared": drop("param_dtypes", 4),
        "float16 scales and a second entry": tensor("param_dtypes", {"scale": "<f2", "zero_point": "<u1"}, 4),
        "float16 centroids declared float32": tensor("param_dtypes", {"centroids": "<f4"}, 5),
        "float32 centroids undeclared": drop("param_dtypes", 6),
        "float32 centroids named as the default": tensor("param_dtypes", {"centroids": "<f2"}, 6),
        "float32 centroids read as float16 at 4 bits": lambda m: (m["tensors"][6].pop("param_dtypes"), m["tensors"][6].update(bits=4)),
        "lut at 9 bits": tensor("bits", 9, 5), "lut at 0 bits": tensor("bits", 0, 5), "lut at 1 bit": tensor("bits", 1, 5),
        "lut with a scale": tensor("params", {"scale": 13}, 5), "lut as sym": tensor("scheme", "sym", 5),
        "sym as lut": tensor("scheme", "lut"), "lut float16 as asym": lambda m: m["tensors"][6].update(scheme="asym"),
    }
    for what, fn in cases.items():
        yield what, edit(fn)
    packed = msgpack.packb(meta, use_bin_type=True)
    yield "trailing byte", packed + b"\xc0"
    yield "not a map", msgpack.packb([1, 2])
    yield "empty", b""
    yield "cut short", packed[:-1]
    marker = edit(lambda m: m["options"].update(x="QQQQ"))
    yield "invalid UTF-8", marker.replace(b"QQQQ", b"\xed\xa0\x80Q")  # an encoded surrogate
    yield "overlong UTF-8", marker.replace(b"QQQQ", b"\xc0\xafQQ")
    yield "array count beyond the data", packed[:-3] + b"\xdd\xff\xff\xff\xff"


# Cases where the C reader is deliberately stricter than Python (see docs/exports-and-firmware.md): it refuses them.
C_STRICTER = {
    "duplicate map key": lambda meta: _raw_map(list(meta.items()) + [("format", meta["format"])]),
    "ext type in options": lambda meta: msgpack.packb(dict(meta, options={"x": msgpack.ExtType(5, b"ab")}), use_bin_type=True),
    "parameter dtype given twice": lambda meta: _packed_with(meta, 4, "param_dtypes", {"scale": "QQQQ"}).replace(
        b"\x81\xa5scale\xa4QQQQ", b"\x82\xa5scale\xa3<f2\xa5scale\xa3<f2"),
}


def _packed_with(meta: dict[str, Any], i: int, key: str, value: Any) -> bytes:
    """The metadata packed with tensor i's `key` set to `value`."""
    m = msgpack.unpackb(msgpack.packb(meta, use_bin_type=True), raw=False)
    m["tensors"][i][key] = value
    return msgpack.packb(m, use_bin_type=True)


def _nest(depth: int) -> Any:
    x: Any = 0
    for _ in range(depth):
        x = [x]
    return x


def test_hostile_metadata_same_verdict_as_python(tiny: Path, reader_driver_asan: Path, tmp_path: Path):
    """Metadata broken one rule at a time, checksums consistent: C and Python agree on every case,
    and on the decoded values wherever they accept."""
    with QpkReader(tiny) as q:
        meta, payload = q.meta, tiny.read_bytes()[q.payload_offset :]
    cases = list(_hostile_metas(meta))
    paths = []
    for i, (_, m) in enumerate(cases):
        paths.append(tmp_path / f"h{i}.qpk")
        paths[-1].write_bytes(_assemble(m, payload))
    got = _c_verdicts(reader_driver_asan, paths)
    want = {what: _python_verdict(p) for (what, _), p in zip(cases, paths)}
    # the cases do what they say: valid ones stay valid, the rest break a rule Python checks too
    valid = {"unchanged", "axis missing (per tensor)", "block nil", "float and int keys in options", "key 65536 chars",
             "param_dtypes nil", "float32 centroids read as float16 at 4 bits", "block 2^40 - 1", "an array of 4,000,001 items",
             "a map of 2,000,000 pairs"}
    assert {what for what, v in want.items() if v != "reject"} == valid
    assert [(what, g) for (what, _), g in zip(cases, got) if g != want[what]] == []


def test_c_reader_stricter_than_python(tiny: Path, reader_driver_asan: Path, tmp_path: Path):
    with QpkReader(tiny) as q:
        meta, payload = q.meta, tiny.read_bytes()[q.payload_offset :]
    paths = []
    for i, fn in enumerate(C_STRICTER.values()):
        paths.append(tmp_path / f"s{i}.qpk")
        paths[-1].write_bytes(_assemble(fn(meta), payload))
    assert _c_verdicts(reader_driver_asan, paths) == ["reject"] * len(paths)
    assert all(_python_verdict(p) != "reject" for p in paths)
    # nesting past 32 levels: both readers refuse it now
    deep = tmp_path / "deep.qpk"
    deep.write_bytes(_assemble(msgpack.packb(dict(meta, options={"x": _nest(40)}), use_bin_type=True), payload))
    assert _c_verdicts(reader_driver_asan, [deep]) == ["reject"] and _python_verdict(deep) == "reject"


def test_header_rules(tiny: Path, reader_driver_asan: Path, tmp_path: Path):
    good = tiny.read_bytes()
    meta_len = struct.unpack_from("<Q", good, 16)[0]
    meta, payload = good[HEADER_SIZE : HEADER_SIZE + meta_len], good[align(HEADER_SIZE + meta_len) :]
    assert _assemble(meta, payload, minor=1) == good
    variants = {"major 2": _assemble(meta, payload, major=2), "minor 7": _assemble(meta, payload, minor=7),
                "flags": _assemble(meta, payload, flags=1), "meta too long": _assemble(meta, payload, meta_len=(256 << 20) + 1),
                "payload offset": _assemble(meta, payload, payload_off=len(good)),
                "payload length": _assemble(meta, payload, payload_len=1), "reserved": good[:76] + b"\1" + good[77:],
                "magic": b"\x89QPJ" + good[4:], "padding": good + bytes(64), "short": good[:79], "nothing": b"",
                "zeros after the last blob": _assemble(meta, payload + bytes(64), minor=1)}
    paths = []
    for i, data in enumerate(variants.values()):
        paths.append(tmp_path / f"v{i}.qpk")
        paths[-1].write_bytes(data)
    got = dict(zip(variants, _c_verdicts(reader_driver_asan, paths)))
    assert got.pop("minor 7") == _python_verdict(tiny)  # any minor version of major 1
    assert set(got.values()) == {"reject"}


def test_decompression_budget(tiny: Path, reader_driver_asan: Path, tmp_path: Path):
    """FORMAT.md's budget, checked on open as Python does: a blob stored with zstd may claim 64 x its
    length + 4096 bytes, the graph blob the quantized tensors' source bytes more; one byte over is
    refused before anything is read (QPK_E_BLOB), one within reaches the tensor (QPK_E_CODEC)."""
    with QpkReader(tiny) as q:
        meta, payload = q.meta, tiny.read_bytes()[q.payload_offset :]
        graph, codes = q.graph_index, q.entries[2].codes  # tensor 2: pow2, 2 bits, per tensor
        zeroed = sum(e.count * DTYPE_SIZES[e.dtype] for e in q.entries)
        assert q.entries[2].shape == (9,) and q.entries[2].dtype == "float32"

    def edited(blob: int, raw_length: int, shape: list[int] | None = None) -> bytes:
        m = msgpack.unpackb(msgpack.packb(meta, use_bin_type=True), raw=False)
        m["blobs"][blob][1], m["blobs"][blob][4] = ZSTD.id, raw_length
        if shape is not None:
            m["tensors"][2]["shape"] = shape
        return msgpack.packb(m, use_bin_type=True)

    graph_limit = expansion_limit(meta["blobs"][graph][3], zeroed)
    codes_limit = expansion_limit(meta["blobs"][codes][3])
    variants = {"graph at its budget": edited(graph, graph_limit), "graph over": edited(graph, graph_limit + 1),
                # 2-bit codes: 4 weights a byte; the graph's allowance grows with them but it is stored raw
                "codes at their budget": edited(codes, codes_limit, [4 * codes_limit]),
                "codes over": edited(codes, codes_limit + 1, [4 * (codes_limit + 1)])}
    paths = []
    for i, m in enumerate(variants.values()):
        paths.append(tmp_path / f"b{i}.qpk")
        paths[-1].write_bytes(_assemble(m, payload))
    rcs = [int(line.split()[0]) for line in _run([reader_driver_asan, "check", *paths]).split("\n")[:-1]]
    assert dict(zip(variants, rcs)) == {"graph at its budget": 0, "graph over": QPK_E_BLOB,
                                        "codes at their budget": QPK_E_CODEC, "codes over": QPK_E_BLOB}
    assert _c_verdicts(reader_driver_asan, paths[:1]) == [_python_verdict(paths[0])] == [_python_verdict(tiny)]
    for path in (paths[1], paths[3]):
        with pytest.raises(FormatError, match="decompression bomb"):
            QpkReader(path)
    QpkReader(paths[2]).close()  # within the budget: opens, and fails only when the codes are decoded
    assert _python_verdict(paths[2]) == "reject"


def test_random_metadata_mutations_agree_with_python(tiny: Path, reader_driver: Path, tmp_path: Path):
    """Random byte changes in the metadata with checksums fixed: whatever C accepts, Python accepts
    with the same values, and the other way round."""
    data = bytearray(tiny.read_bytes())
    meta_len = struct.unpack_from("<Q", data, 16)[0]
    rng = np.random.default_rng(11)
    paths = []
    for i in range(600):
        m = bytearray(data[HEADER_SIZE : HEADER_SIZE + meta_len])
        for pos in rng.integers(0, meta_len, 1 + i % 3):
            m[pos] = int(rng.integers(0, 256))
        paths.append(tmp_path / f"r{i}.qpk")
        paths[-1].write_bytes(_assemble(bytes(m), bytes(data[align(HEADER_SIZE + meta_len) :])))
    got, want = _c_verdicts(reader_driver, paths), [_python_verdict(p) for p in paths]
    assert [(i, g, w) for i, (g, w) in enumerate(zip(got, want)) if g != w] == []
    assert 0 < sum(w != "reject" for w in want) < len(want)


def test_qpk_open_time_grows_linearly(reader_driver: Path, tmp_path: Path):
    """qpk_open, and qpk_open with qpk_get_tensor of every tensor, on 5,000 and 20,000 entries whose
    blobs run backwards through the blob table: 4x the entries take under 8x the CPU time (linear
    work measures about 4x; checking keys or blob ownership pairwise, or walking the blob table or
    the tensor list per entry, 16x). Each figure is the least of 5 runs in one process."""
    from tests.test_container import _rewrite_meta
    from tests.test_hostile import many_entries

    paths = []
    for count in (5_000, 20_000):
        paths.append(tmp_path / f"e{count}.qpk")
        many_entries(paths[-1], count)
        paths[-1].write_bytes(_rewrite_meta(paths[-1].read_bytes(), lambda m: m["tensors"].reverse()))
    with QpkReader(paths[0]) as q:
        assert q.entries[0].codes > q.entries[1].codes  # backwards: no cursor over the table helps

    def ratios() -> tuple[float, float]:
        (n1, open1, all1), (n2, open2, all2) = (map(int, line.split()) for line in _run([reader_driver, "time", 5, *paths]).split("\n")[:2])
        assert (n1, n2) == (5_000, 20_000)
        return open2 / max(open1, 1), all2 / max(all1, 1)

    got = ratios()
    if max(got) >= 8:  # once more, in case the machine was busier during the first
        got = ratios()
    assert max(got) < 8, got


def test_c_target_declares_the_schemes_qpk_h_decodes():
    """The C target's native schemes (converter.export) are exactly those qpk.h has a constant for."""
    from qpack.converter.export import TARGETS
    from qpack.converter.export.c import scheme_constant
    from qpack.formats.qpk import SCHEMES

    decoded = {s for s in SCHEMES if scheme_constant(s) is not None}
    assert decoded == set(TARGETS["c"].native.schemes) == set(TARGETS["c-coded"].native.schemes)
