"""The .qpk container: golden bytes, alignment, determinism, and rejection of every corruption."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from qpack.converter.convert import convert
from qpack.converter.policy import Policy
from qpack.converter.quant import get_quantizer
from qpack.formats.errors import FormatError
from qpack.formats.onnx_model import OnnxModel
from qpack.formats.qpk import BlobKind, Grouping, QpkReader, QpkWriter, TensorEntry, pack
from qpack.formats.qpk import meta as qpk_meta
from qpack.formats.qpk.spec import ALIGNMENT, HEADER, HEADER_SIZE, MAGIC
from tests.tiny import tiny_model


@pytest.fixture()
def tiny_qpk(tmp_path: Path) -> Path:
    src = tmp_path / "tiny.onnx"
    src.write_bytes(tiny_model().SerializeToString())
    out = tmp_path / "tiny.qpk"
    # conv.w has 8 elements, below the default minimum: --include forces it
    convert(OnnxModel(src), Policy("asym", 3, per_channel=True, include=("conv.w",)), out)
    return out


def test_golden_header_and_payload(tiny_qpk: Path):
    data = tiny_qpk.read_bytes()
    magic, major, minor, flags, meta_len, payload_off, payload_len, meta_sha, crc, reserved = HEADER.unpack_from(data)
    assert data[:8] == b"\x89QPK\r\n\x1a\n" == MAGIC
    assert (major, minor, flags) == (1, 0, 0)
    assert HEADER_SIZE == 80 and reserved == data[76:80] == b"\0\0\0\0"
    assert payload_off % ALIGNMENT == 0 and payload_off == -(-(80 + meta_len) // 64) * 64
    assert payload_off + payload_len == len(data)
    assert hashlib.sha256(data[80 : 80 + meta_len]).digest() == meta_sha
    q = QpkReader(tiny_qpk)
    conv = next(e for e in q.entries if e.name == "conv.w")
    assert (conv.scheme, conv.bits, conv.axis, conv.shape) == ("asym", 3, 0, (2, 1, 2, 2))
    # conv.w rows: [-0.875, -0.625, -0.375, -0.125] and [0.125, 0.375, 0.625, 0.875]; per channel the
    # range is widened to hold 0: scale = 0.875/7 = 0.125, zero points 7 and 0.
    assert q.params(conv)["scale"].tolist() == [0.125, 0.125]
    assert q.params(conv)["zero_point"].tolist() == [7, 0]
    assert q.codes(conv).reshape(-1).tolist() == [0, 2, 4, 6, 1, 3, 5, 7]  # half-to-even rounding
    # 3-bit LSB-first stream of those 8 codes, 3 bytes (bits listed MSB..LSB within each byte):
    # byte0 = c2[1:0] c1 c0 = 00 010 000; byte1 = c5[0] c4 c3 c2[2] = 1 001 110 1;
    # byte2 = c7 c6 c5[2:1] = 111 101 01
    raw = bytes(q.blob_bytes(conv.codes, q.blobs[conv.codes].kind))
    assert raw == bytes([0b00010000, 0b10011101, 0b11110101])
    fc = next(e for e in q.entries if e.name == "fc.w")
    assert fc.axis == 1  # MatMul B: output columns
    assert {k["name"] for k in q.kept} == {"conv.b", "shape"}
    q.close()


def test_blobs_aligned_and_ordered(tiny_qpk: Path):
    with QpkReader(tiny_qpk) as c:
        end = 0
        for b in c.blobs:
            assert (c.payload_offset + b.offset) % ALIGNMENT == 0
            assert b.offset >= end
            end = b.offset + b.length
        c.verify()


@pytest.mark.parametrize(("grouping", "scale_dtype", "minor"), [
    (Grouping(0), "<f4", 0),  # per channel, float32 scales: nothing 1.0 lacks
    (Grouping(1, 2), "<f4", 1),  # blocks: the entry has `block`
    (Grouping(0), "<f2", 1),  # float16 scales: the entry has `param_dtypes`
])
def test_writer_declares_the_minor_version_its_entries_need(tmp_path: Path, grouping: Grouping, scale_dtype: str, minor: int):
    """The writer, not its caller, sets the header's minor version: 1 exactly when an entry uses a 1.1 key."""
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    codes, params = get_quantizer("sym").quantize(x, 4, grouping)
    path = tmp_path / "m.qpk"
    with QpkWriter(tmp_path) as w:
        c = w.add(pack(codes, 4), BlobKind.CODES)
        scale = w.add(params["scale"].astype(scale_dtype), BlobKind.PARAM)
        graph = w.add(b"g", BlobKind.GRAPH)
        entry = TensorEntry("w", "init:w", x.shape, "float32", "matrix", "sym", 4, grouping, c, {"scale": scale},
                            {"scale": scale_dtype})
        meta = qpk_meta.build("t", "onnx", {}, {}, graph, hashlib.sha256(b"g").hexdigest(), [entry], [])
        with pytest.raises(TypeError):  # no caller chooses the version
            w.write(path, meta, minor=0)  # type: ignore[call-arg]  # the refusal is what is tested
        w.write(path, meta)
    assert HEADER.unpack_from(path.read_bytes())[2] == minor
    with QpkReader(path) as q:
        assert q.version == (1, minor) and [e.to_meta() for e in q.entries] == [entry.to_meta()]
        assert np.allclose(q.dequantize(q.entries[0]), x, atol=0.15)


def test_deterministic(tmp_path: Path, sample: Path):
    outs = []
    for i in range(2):
        out = tmp_path / f"s{i}.qpk"
        convert(OnnxModel(sample), Policy("pow2", 5, per_channel=True), out)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def _expect_rejected(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    with pytest.raises(FormatError):
        q = QpkReader(path)
        for e in q.entries:
            q.dequantize(e)
        q.graph()


def test_every_truncation_rejected(tiny_qpk: Path, tmp_path: Path):
    data = tiny_qpk.read_bytes()
    bad = tmp_path / "bad.qpk"
    for cut in sorted({0, 1, 7, 8, 40, 79, 80, 81, 100, len(data) // 2, len(data) - 64, len(data) - 1}):
        _expect_rejected(bad, data[:cut])
    _expect_rejected(bad, data + b"\0")


def test_every_region_corruption_rejected(tiny_qpk: Path, tmp_path: Path):
    data = tiny_qpk.read_bytes()
    bad = tmp_path / "bad.qpk"
    rng = np.random.default_rng(0)
    positions = list(range(0, 80, 3)) + list(rng.integers(80, len(data), 60))
    for pos in positions:
        b = bytearray(data)
        b[pos] ^= 0x41
        _expect_rejected(bad, bytes(b))


def test_hostile_header_fields_rejected(tiny_qpk: Path, tmp_path: Path):
    """Rewrite fields and fix the header CRC, so only the field checks stand in the way."""
    import zlib

    data = tiny_qpk.read_bytes()
    fields = list(HEADER.unpack_from(data))
    bad = tmp_path / "bad.qpk"
    for index, value in [(1, 2), (3, 1), (4, 2**62), (4, 1), (5, 2**63), (5, 64), (6, 2**40)]:
        f = list(fields)
        f[index] = value
        body = struct.pack("<8sHHIQQQ32s", *f[:8])
        header = body + zlib.crc32(body).to_bytes(4, "little") + bytes(4)
        _expect_rejected(bad, header + data[HEADER_SIZE:])


def test_not_a_qpk(tmp_path: Path):
    bad = tmp_path / "x.qpk"
    _expect_rejected(bad, b"hello world, this is not a container at all" * 3)


def test_decompression_stops_at_promised_length(tmp_path: Path):
    """A graph blob that inflates past its recorded raw_length is refused after raw_length + 1 bytes."""
    import zstandard

    from qpack.formats.qpk import ZSTD, BlobKind, QpkWriter

    frame = zstandard.ZstdCompressor(level=3).compress(bytes(50_000_000))
    with QpkWriter(tmp_path) as w:
        i = w.add_encoded(BlobKind.GRAPH, ZSTD.id, frame, 1000)  # the metadata lies about the size
        path = tmp_path / "lie.qpk"
        w.write(path, {"format": "onnx", "graph": i, "tensors": [], "kept": []})
    with QpkReader(path) as c, pytest.raises(FormatError, match="1001\\+ bytes, expected 1000"):
        c.blob_bytes(i, BlobKind.GRAPH)


@pytest.mark.parametrize("kind", ["graph", "codes"])
def test_decompression_bomb_refused_on_open(tmp_path: Path, sample: Path, kind: str):
    """A small blob that claims gigabytes (4 GiB of zeros compress to ~130 kB) is refused before any decoding."""
    from qpack.formats.qpk import ZSTD

    good = tmp_path / "good.qpk"
    convert(OnnxModel(sample), Policy("asym", 8), good)
    def bomb(m):
        if kind == "graph":
            row = m["blobs"][m["graph"]]
            row[1], row[4] = ZSTD.id, 4 << 30
        else:  # a tensor whose shape implies 4 GiB of 8-bit codes, stored as a tiny frame
            t = m["tensors"][0]
            t["shape"] = [1 << 16, 1 << 16]
            row = m["blobs"][t["codes"]]
            row[1], row[4] = ZSTD.id, 1 << 32

    data = _rewrite_meta(good.read_bytes(), bomb)
    bad = tmp_path / "bomb.qpk"
    bad.write_bytes(data)
    with pytest.raises(FormatError, match="decompression bomb"):
        QpkReader(bad)


def _rewrite_meta(data: bytes, edit) -> bytes:
    """Re-encode a container with edited metadata and valid checksums: a hostile, not a corrupt, file."""
    import msgpack

    from qpack.formats.qpk.spec import HEADER_BODY

    fields = HEADER.unpack_from(data)
    meta_len, payload_off, payload_len = fields[4], fields[5], fields[6]
    meta = msgpack.unpackb(data[80 : 80 + meta_len], raw=False)
    edit(meta)
    packed = msgpack.packb(meta, use_bin_type=True)
    new_off = -(-(80 + len(packed)) // 64) * 64
    body = HEADER_BODY.pack(MAGIC, 1, 0, 0, len(packed), new_off, payload_len, hashlib.sha256(packed).digest())
    import zlib

    header = HEADER.pack(*HEADER_BODY.unpack(body), zlib.crc32(body), bytes(4))
    return header + packed + bytes(new_off - 80 - len(packed)) + data[payload_off:]


@pytest.mark.parametrize("edit", [
    lambda m: m["tensors"][0].update(shape=[2**39, 2**39]),
    lambda m: m["tensors"][0].update(shape=[3, 3]),
    lambda m: m["tensors"][0].update(bits=9),
    lambda m: m["tensors"][0].update(bits=True),
    lambda m: m["tensors"][0].update(axis=7),
    lambda m: m["tensors"][0].update(codes=999),
    lambda m: m["tensors"][0].update(codes=m["graph"]),
    lambda m: m["tensors"][0].update(scheme="fp8"),
    lambda m: m["tensors"][0].update(dtype="int8"),
    lambda m: m["tensors"][0]["params"].pop("scale"),
    lambda m: m["tensors"][0]["params"].update(scale=m["tensors"][0]["codes"]),
    lambda m: m["tensors"].append(dict(m["tensors"][0])),
    lambda m: m.update(tensors="nope"),
    lambda m: m.update(graph=-1),
    lambda m: m.update(format="pytorch"),
    lambda m: m["blobs"][0].__setitem__(2, 7),
    lambda m: m["blobs"][0].__setitem__(3, 2**62),
    lambda m: m["blobs"][-1].__setitem__(1, 9),
    lambda m: m["blobs"].pop(),
    lambda m: m.update(graph_sha256="0" * 64),
], ids=lambda f: "")
def test_hostile_metadata_rejected(tiny_qpk: Path, tmp_path: Path, edit):
    bad = tmp_path / "hostile.qpk"
    _expect_rejected(bad, _rewrite_meta(tiny_qpk.read_bytes(), edit))


def test_rewrite_helper_keeps_a_valid_file(tiny_qpk: Path, tmp_path: Path):
    good = tmp_path / "same.qpk"
    good.write_bytes(_rewrite_meta(tiny_qpk.read_bytes(), lambda m: None))
    q = QpkReader(good)
    assert all(q.dequantize(e).shape == e.shape for e in q.entries) and q.graph()
