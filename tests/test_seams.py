"""The extension points: scheme and codec registries, the grouping record, the spill writer, the
adapter table, and the thread pool's byte-identical output."""

from __future__ import annotations

import hashlib
import tracemalloc
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from qpack.converter import quant
from qpack.converter.convert import convert
from qpack.converter.policy import Policy
from qpack.converter.quant.stream import quantize_stream
from qpack.formats.errors import FormatError
from qpack.formats.onnx_model import OnnxModel
from qpack.formats.qpk import (
    CODECS,
    SCHEMES,
    BlobKind,
    ByteCodec,
    Grouping,
    ParamSpec,
    QpkReader,
    QpkWriter,
    SchemeSpec,
    register_codec,
    register_scheme,
)
from qpack.formats.qpk import meta as qpk_meta
from qpack.formats.qpk.spec import HEADER


def _toy_decode(codes, params, bits, grouping):
    """Each group's codes index its own 2^n-entry table."""
    shape = codes.shape
    table = params["table"].astype(np.float32).reshape(-1, 1 << bits)
    group = np.broadcast_to(grouping.expand(np.arange(table.shape[0]), shape), shape)
    return table[group, codes]


@dataclass(frozen=True)
class _Deflate(ByteCodec):
    """A codec the format does not know: zlib, decoded within the promised length."""

    id: int = 200
    name: str = "deflate"
    label: str = "deflate"
    help: str = "zlib"

    def encode(self, raw, kind, ctx=None):
        return zlib.compress(raw, 9)

    def decode(self, stored, raw_length, ctx=None):
        d = zlib.decompressobj()
        out = d.decompress(stored, raw_length + 1)
        if len(out) != raw_length or not d.eof:
            raise FormatError("deflate blob does not decode to its length")
        return out


@pytest.fixture()
def toy():
    """A scheme ('toy': a per-group table of 2^n float16 values) and a codec, registered for one test."""
    spec = register_scheme(SchemeSpec("toy", 1, 3, (ParamSpec("table", "<f2", lambda bits: 1 << bits),),
                                      lambda bits: 1 << bits, _toy_decode))

    class Toy(quant.Quantizer):
        name = "toy"

        @classmethod
        def stats(cls, x, axes):
            return x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)

        @classmethod
        def params(cls, stats, bits):
            lo, hi = stats
            steps = np.linspace(0, 1, 1 << bits, dtype=np.float32)
            table = lo[..., None] + (hi - lo)[..., None] * steps  # group-shaped, one table per group
            return {"table": table.astype(np.float16)}

        @classmethod
        def encode(cls, x, bits, params):
            t = params["table"].astype(np.float32)
            return np.abs(x[..., None] - t).argmin(axis=-1).astype(np.uint8)

    codec = register_codec(_Deflate())
    yield spec, Toy, codec
    SCHEMES.pop("toy")
    quant.QUANTIZERS.pop("toy")
    CODECS.pop(codec.id)


def test_toy_scheme_and_codec_round_trip(toy, sample: Path, tmp_path: Path):
    spec, toy_q, codec = toy
    out = tmp_path / "toy.qpk"
    result = convert(OnnxModel(sample), Policy("toy", 2, per_channel=True), out, codec=codec)
    src = {w.key: np.asarray(w.array, np.float32) for w in OnnxModel(sample).weights}
    with QpkReader(out) as q:
        assert {e.scheme for e in q.entries} == {"toy"} and len(q.entries) == len(result.tensors) > 0
        largest = max(q.entries, key=lambda e: e.count)
        assert q.blobs[largest.codes].codec == codec.id  # the registered codec really stored it
        for e in q.entries:
            codes, params = toy_q.quantize(src[e.key], 2, e.grouping)
            assert np.array_equal(q.codes(e), codes)
            assert q.params(e)["table"].size == 4 * e.groups
            y = q.dequantize(e)
            x = src[e.key]
            assert np.abs(y - x).max() <= (x.max() - x.min()) / 6 * 1.01 + 1e-3  # half a step of 3 intervals, fp16 table
    # the blob table now names a codec this reader knows only through the registry
    CODECS.pop(codec.id)
    with pytest.raises(FormatError, match="unknown codec 200"):
        QpkReader(out)
    register_codec(codec)


def test_reader_enforces_each_scheme_bit_range(tmp_path: Path, sample: Path):
    """sym at 1 bit is forbidden by FORMAT.md: a container claiming it is refused, though it is well formed."""
    from tests.test_container import _rewrite_meta

    out = tmp_path / "s.qpk"
    convert(OnnxModel(sample), Policy("sym", 2), out)
    bad = tmp_path / "bad.qpk"
    bad.write_bytes(_rewrite_meta(out.read_bytes(), lambda m: [t.update(bits=1) for t in m["tensors"]]))
    with pytest.raises(FormatError, match="outside 2..16 for scheme sym"):
        QpkReader(bad)


def test_cli_choices_come_from_the_registries():
    from qpack.converter import cli

    assert [m.value for m in cli.SchemeName] == list(quant.QUANTIZERS)
    assert {m.value for m in cli.CodecName} == {"packed", *(c.name for c in CODECS.values() if c.name != "raw")}


def test_codecs_say_how_they_store_codes():
    """What allocation asks a codec instead of naming it: ans prices codes of every width by their
    entropy plus its tables, zstd only codes that fill whole bytes, packed none; an estimate is never
    above the packed size, and a stream the format would not let expand that far is priced packed."""
    from qpack.formats.qpk import ANS, RAW, ZSTD, packed_size

    assert [c.label for c in (RAW, ZSTD, ANS)] == ["packed", "zstd", "ans"]
    assert all(c.help and "\n" not in c.help for c in (RAW, ZSTD, ANS))
    assert [c.entropy_coded for c in (RAW, ZSTD, ANS)] == [False, False, True]
    assert [b for b in range(1, 17) if ZSTD.sized_by_entropy(b)] == [1, 2, 4, 8]
    assert all(ANS.sized_by_entropy(b) and not RAW.sized_by_entropy(b) for b in range(1, 17))
    assert RAW.price(10_000, 4, 2.0, 16) is None and ZSTD.price(10_000, 3, 2.0, 8) is None
    # 10,000 codes at 2 bits each: 2,500 bytes, 2% over, and a profile table of 16 bytes plus the frame's 8
    assert ANS.price(10_000, 4, 2.0, 16) == ZSTD.price(10_000, 4, 2.0, 16) == 2550 + 24
    assert ANS.price(10_000, 4, 4.0, 16) == packed_size(10_000, 4)  # nothing to gain: the packed size
    assert ANS.price(10_000, 12, 6.0, 400) == 7650 + 64 + 400 // 4  # past a byte, a table weight per run of 4 codes
    assert ANS.price(1 << 20, 8, 0.0, 1) is None  # one code a million times: past the 64x expansion limit


def test_schemes_declare_what_allocation_asks():
    flags = {n: (q.trellis, q.entropy_steps, q.coded_choice) for n, q in quant.QUANTIZERS.items()}
    assert flags == {"asym": (False, False, False), "sym": (False, True, False), "pow2": (False, False, False),
                     "lut": (False, False, False), "dq": (True, False, True)}


@pytest.mark.parametrize("shape,axis,block", [((10, 7), 0, 4), ((10, 7), 1, 3), ((3, 8, 2, 2), 1, 3), ((6, 5), 1, 5), ((9,), 0, 2)])
def test_grouping_blocks(shape, axis, block):
    g = Grouping(axis, block)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    gshape = g.shape(shape)
    assert gshape[axis] == -(-shape[axis] // block) and g.count(shape) == int(np.prod(gshape))
    # every weight's group, from the definition: index // block along the axis, the same elsewhere
    idx = np.indices(shape)
    idx[axis] //= block
    want = np.ravel_multi_index(tuple(idx), gshape)
    assert np.array_equal(np.broadcast_to(g.expand(np.arange(g.count(shape)), shape), shape), want)
    xv, axes = g.blocked(x)
    amax = np.abs(xv).max(axis=axes, keepdims=True)
    assert np.array_equal(amax.reshape(-1), np.array([np.abs(x[want == k]).max() for k in range(g.count(shape))]))
    assert np.array_equal(g.unblocked(xv, shape), x)


@pytest.mark.parametrize("name", ["asym", "sym", "pow2"])
def test_blocked_quantization_error_per_group(name):
    x = np.random.default_rng(1).laplace(0, 1, (13, 20)).astype(np.float32)
    g = Grouping(1, 8)  # short last block of 4
    q = quant.get_quantizer(name)
    codes, params = q.quantize(x, 4, g)
    y = q.dequantize(codes, params, 4, g)
    assert params[next(iter(params))].size == 13 * 3
    if name != "pow2":  # uniform: within half a step of each group's own scale
        scale = np.broadcast_to(g.expand(params["scale"], x.shape), x.shape)
        assert (np.abs(y - x) <= scale / 2 * (1 + 1e-6)).all()
    else:  # pow2 rounds each group's largest magnitude to the nearest power of two (ties at 1.5 go up)
        xv, axes = g.blocked(x)
        yv, _ = g.blocked(y)
        ratio = np.abs(yv).max(axis=axes) / np.abs(xv).max(axis=axes)
        assert ((ratio > 2 / 3) & (ratio <= 4 / 3)).all()


def test_golden_block_scaled_tensor(tmp_path: Path):
    """4-bit sym, blocks of 2 along axis 1 of a 2x3 tensor: the group array is 2x2, the last block short."""
    x = np.array([[0.7, -0.35, 0.1], [1.4, 0.0, -0.2]], np.float32)
    g = Grouping(1, 2)
    codes, params = quant.get_quantizer("sym").quantize(x, 4, g)
    # scales amax/7: [[0.1, 0.1/7], [0.2, 0.2/7]]; codes q + 7
    assert params["scale"].tolist() == np.array([0.1, 0.1 / 7, 0.2, 0.2 / 7], np.float32).tolist()
    assert codes.tolist() == [[14, 3, 14], [14, 7, 0]]
    entry = qpk_meta.TensorEntry("w", "init:w", (2, 3), "float32", "matrix", "sym", 4, g, 0, {"scale": 1})
    path = tmp_path / "b.qpk"
    from qpack.formats.qpk import pack

    with QpkWriter(tmp_path) as w:
        w.add(pack(codes, 4), BlobKind.CODES)
        w.add(params["scale"], BlobKind.PARAM)
        graph = w.add(b"g", BlobKind.GRAPH)
        w.write(path, qpk_meta.build("t", "onnx", {}, {}, graph, hashlib.sha256(b"g").hexdigest(), [entry], []))
    data = path.read_bytes()
    assert HEADER.unpack_from(data)[2] == 1  # minor version 1.1: blocks
    with QpkReader(path) as q:
        (e,) = q.entries
        assert e.grouping == g and e.to_meta()["block"] == 2
        assert bytes(q.blob_bytes(e.codes, BlobKind.CODES)) == bytes([0x3E, 0xEE, 0x07])  # LSB-first nibbles: 14 3 | 14 14 | 7 0
        assert np.allclose(q.dequantize(e), x, atol=0.1 / 2)


@pytest.mark.parametrize("grouping", [Grouping(), Grouping(0), Grouping(1), Grouping(0, 3), Grouping(1, 4)])
@pytest.mark.parametrize("name", ["asym", "pow2"])
def test_streamed_quantization_matches_whole_tensor(monkeypatch, grouping, name):
    """Row chunks (forced tiny here, with codes carried across byte boundaries) change nothing."""
    from qpack.converter.quant import stream
    from qpack.formats.qpk import pack

    x = np.random.default_rng(2).standard_normal((23, 13)).astype(np.float32)
    monkeypatch.setattr(stream, "CHUNK_ELEMENTS", 40)
    q = quant.get_quantizer(name)
    got = quantize_stream(q, x, 3, grouping, "mse")
    codes, params = q.quantize(x, 3, grouping, "mse")
    assert np.array_equal(got.packed, pack(codes, 3))
    assert all(np.array_equal(got.params[k], params[k]) for k in params)
    assert got.hist.tolist() == np.bincount(codes.reshape(-1), minlength=8).tolist()
    y = q.dequantize(codes, params, 3, grouping)
    assert got.noise == pytest.approx(float(((x - y).astype(np.float64) ** 2).sum()), rel=1e-5)


def test_spill_writer_keeps_no_blob_in_memory(tmp_path: Path):
    tracemalloc.start()
    try:
        with QpkWriter(tmp_path) as w:
            for i in range(4):
                blob = np.full(8 << 20, i, np.uint8)
                w.add(blob, BlobKind.CODES)
                del blob
            held = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            size = w.write(tmp_path / "big.qpk", {"format": "onnx"})
            peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert held < 1 << 20 and peak < 4 << 20  # 32 MiB of blobs went through
    assert size == (tmp_path / "big.qpk").stat().st_size > 32 << 20
    assert [p.name for p in tmp_path.iterdir()] == ["big.qpk"]  # the spill file was never visible


def test_thread_pool_output_is_byte_identical(sample: Path, tmp_path: Path):
    outs = []
    for workers in (1, 2, 5):
        out = tmp_path / f"w{workers}.qpk"
        convert(OnnxModel(sample), Policy("asym", 3, per_channel=True, clip="mse"), out, workers=workers)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == outs[2]


def test_adapter_table(sample: Path, tfl_fp16: Path, tmp_path: Path):
    from qpack.formats.registry import ADAPTERS, Adapter, open_model, register_adapter, sniff

    assert sniff(sample) == "onnx" and sniff(tfl_fp16) == "tflite"
    for a in ADAPTERS.values():
        module = a.load()
        assert callable(getattr(module, a.model_class)) and callable(module.restore)
    assert open_model(tfl_fp16).format == "tflite"
    with pytest.raises(ValueError, match="no source format"):
        register_adapter(Adapter("safetensors", ".safetensors", "x", "X", None, "safetensors file"))
    fake = tmp_path / "m.tflite"
    fake.write_bytes(sample.read_bytes())
    with pytest.raises(FormatError, match="not a TFLite model"):
        open_model(fake)


@pytest.mark.parametrize("name", ["asym", "sym", "pow2", "lut"])
@pytest.mark.parametrize("grouping", [Grouping(), Grouping(0), Grouping(1), Grouping(1, 16), Grouping(0, 5)])
@pytest.mark.parametrize("half", [False, True])
def test_round_trip_every_scheme_grouping_and_param_dtype(tmp_path: Path, name: str, grouping: Grouping, half: bool):
    """Through writer and reader; each group's error within its scheme's bound, parameters in the asked dtype."""
    q = quant.get_quantizer(name)
    spec = q.spec()
    x = np.random.default_rng(5).laplace(0, 1, (11, 37)).astype(np.float32)
    alt = {p.name: p.dtypes[1] for p in spec.params if len(p.dtypes) > 1} if half else None
    bits = 4
    codes, params = q.quantize(x, bits, grouping, dtypes=alt)
    dtypes = {k: v.dtype.str for k, v in params.items()}
    assert dtypes == {p.name: np.dtype((alt or {}).get(p.name, p.dtype)).str for p in spec.params}
    from qpack.formats.qpk import pack

    entry = qpk_meta.TensorEntry("w", "init:w", x.shape, "float32", "matrix", name, bits, grouping, 0,
                                 {k: i + 1 for i, k in enumerate(params)}, {k: (alt or {}).get(k, spec.dtypes[k]) for k in params})
    path = tmp_path / "t.qpk"
    with QpkWriter(tmp_path) as w:
        w.add(pack(codes, bits), BlobKind.CODES)
        for v in params.values():
            w.add(v, BlobKind.PARAM)
        graph = w.add(b"g", BlobKind.GRAPH)
        w.write(path, qpk_meta.build("t", "onnx", {}, {}, graph, hashlib.sha256(b"g").hexdigest(), [entry], []))
    with QpkReader(path) as r:
        (e,) = r.entries
        y = r.dequantize(e)
    assert np.array_equal(y, q.dequantize(codes, params, bits, grouping))
    xv, axes = grouping.blocked(x)
    yv, _ = grouping.blocked(y)
    err = np.abs(xv - yv).max(axis=axes)
    span = xv.max(axis=axes) - xv.min(axis=axes)
    if name == "asym":  # half a step, plus half a step the rounded zero point may shift the grid by
        assert (err <= span / 15 * 1.01 + 1e-3).all()
    elif name == "lut":  # every weight at its group's nearest level
        table = params["centroids"].astype(np.float32).reshape(-1, 1 << bits)
        gid = np.broadcast_to(grouping.expand(np.arange(table.shape[0]), x.shape), x.shape)
        assert np.allclose(np.abs(x - y), np.abs(x[..., None] - table[gid]).min(axis=-1), atol=1e-6)
        assert (err <= span / 2 + np.abs(xv).max(axis=axes) * 2.0**-10).all()  # float16 levels
    elif name == "sym":
        amax = np.abs(xv).max(axis=axes)
        assert (err <= amax / 7 / 2 * 1.01 + 1e-3).all()
    else:  # pow2: relative error at most 1/3 for magnitudes inside the window, which holds the largest
        big = np.abs(xv) >= np.abs(xv).max(axis=axes, keepdims=True) / 8
        assert (np.abs(xv - yv)[big] <= np.abs(xv)[big] / 3 + 1e-6).all()
