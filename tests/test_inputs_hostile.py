"""Hostile evaluation inputs (--inputs, --images) through the command line: one test per finding.

Every failure is one line naming the user's file and exit 1. Archives that zipfile's writer would not
produce (a small stream declaring 4 GiB, a stream cut short) are written field by field; files that
ask for gigabytes are run in a subprocess whose address space is capped, so a reader that believed
them would fail with "out of memory" instead of the message the test expects.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
from numpy.lib import format as npformat
from typer.testing import CliRunner

from qpack.converter.cli import app
from qpack.converter.datasets import digits

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "digits_cnn.onnx"  # one input 'image' [N, 1, 8, 8] float32, 10 classes
runner = CliRunner()


def _run(*args: object) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def _eval(*args: object) -> Any:
    return _run("eval", SAMPLE, "--bits", "8", *args)


def _one_line_error(r: Any, *needles: str) -> None:
    assert r.exit_code == 1, r.output
    assert r.output.count("\n") == 1 and r.output.startswith("qpack: error:"), r.output
    for n in needles:
        assert n in r.output, r.output


# the command in a child whose address space is capped at its first argument (bytes)
_CHILD = """
import resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.argv = ["qpack", *sys.argv[2:]]
from qpack.converter.cli import run
run()
"""
LIMIT = 3 << 29  # 1.5 GiB of address space: a qpack eval of the sample peaks near 0.5 GiB


def _qpack(*args: object, limit: int = LIMIT, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
    """The qpack command of this checkout in a subprocess: its outcome and its seconds."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", _CHILD, str(limit), *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return p, time.perf_counter() - t0


def _one_line_failure(p: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("qpack: error:"), p.stderr
    for n in needles:
        assert n in p.stderr, p.stderr


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """The header of a float32 .npy file of `shape`, as numpy writes it."""
    f = io.BytesIO()
    npformat.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return f.getvalue()


class Member(NamedTuple):
    name: str
    method: int  # zipfile.ZIP_STORED or ZIP_DEFLATED
    data: bytes  # as stored
    size: int  # declared uncompressed size
    crc: int
    stored: int | None = None  # declared stored size, if not len(data)


def _zip(path: Path, members: list[Member]) -> None:
    """A zip archive written field by field (APPNOTE 4.3.7, 4.3.12, 4.3.16). Every member carries a
    ZIP64 extra field with both sizes, so a member may declare 4 GiB or more."""
    out, central = bytearray(), bytearray()
    for m in members:
        n = m.name.encode()
        stored = len(m.data) if m.stored is None else m.stored
        extra = struct.pack("<HHQQ", 1, 16, m.size, stored)  # ZIP64: uncompressed, then compressed size
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, m.method, 0, 0x21, m.crc, 0xFFFFFFFF, 0xFFFFFFFF,
                           len(n), len(extra)) + n + extra + m.data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, m.method, 0, 0x21, m.crc, 0xFFFFFFFF,
                               0xFFFFFFFF, len(n), len(extra), 0, 0, 0, 0, offset) + n + extra
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(out), 0)
    path.write_bytes(bytes(out + central + end))


def _zeros_bomb(path: Path, mib: int) -> None:
    """An .npz whose one member 'image' is an .npy of `mib` MiB of float32 zeros, shape [N, 1, 8, 8],
    deflated to about a thousandth. After a full flush deflate starts afresh, so each MiB of zeros
    compresses to the same bytes: the stream is written without compressing the whole."""
    header = _npy_header(((mib << 20) // 256, 1, 8, 8))
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    mebibyte = bytes(1 << 20)
    block = c.compress(mebibyte) + c.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(header)
    for _ in range(mib):
        crc = zlib.crc32(mebibyte, crc)
    _zip(path, [Member("image.npy", zipfile.ZIP_DEFLATED, head + block * mib + c.flush(), len(header) + (mib << 20), crc)])


def _png(path: Path, width: int, height: int) -> None:
    """A grayscale PNG header declaring width x height, with one row of pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(width + 1)))
                     + chunk(b"IEND", b""))


def _digit_images(folder: Path, per_class: int = 1) -> None:
    """Real digits as 8x8 grayscale PNGs, `per_class` of each in one sub-folder per class."""
    from PIL import Image

    x, y = digits()
    for c in range(10):
        (folder / str(c)).mkdir(parents=True)
        for i in np.flatnonzero(y == c)[:per_class]:
            Image.fromarray((x[i, 0] * 255).astype(np.uint8)).save(folder / str(c) / f"{i}.png")


# --- good inputs still evaluate ------------------------------------------------------------------------


def test_good_inputs_still_evaluate(tmp_path: Path):
    """The digits as .npz give the accuracy of --dataset digits; real digit images in class folders
    evaluate with labels."""
    x, y = digits()
    npz = tmp_path / "digits.npz"
    np.savez(npz, image=x, labels=y)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert _eval("--inputs", npz, "--json", a).exit_code == 0
    assert _eval("--dataset", "digits", "--json", b).exit_code == 0
    ca, cb = (json.loads(p.read_text())["classification"] for p in (a, b))
    assert ca["accuracy_original"] == cb["accuracy_original"] > 0.9
    assert ca["confusion_quantized"] == cb["confusion_quantized"]
    _digit_images(tmp_path / "images", 5)
    c = tmp_path / "c.json"
    r = _eval("--images", tmp_path / "images", "--size", "8", "--scale", "1/255", "--json", c)
    assert r.exit_code == 0, r.output
    assert json.loads(c.read_text())["classification"]["accuracy_original"] > 0.8


def test_a_big_endian_array_is_read_as_numbers(tmp_path: Path):
    """Big-endian float32 in Fortran order, with int32 labels, evaluates as the digits do (the runtime
    takes native byte order: fed as they were, the bytes made accuracy 10%)."""
    x, y = digits()
    npz = tmp_path / "digits.npz"
    np.savez(npz, image=np.asfortranarray(x.astype(">f4")), labels=y.astype(np.int32))
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert _eval("--inputs", npz, "--json", a).exit_code == 0
    assert _eval("--dataset", "digits", "--json", b).exit_code == 0
    ca, cb = (json.loads(p.read_text())["classification"] for p in (a, b))
    assert ca["accuracy_original"] == cb["accuracy_original"] and ca["confusion_quantized"] == cb["confusion_quantized"]


# --- .npz archives -----------------------------------------------------------------------------------


def test_object_array_is_refused_by_name(tmp_path: Path):
    npz = tmp_path / "objects.npz"
    np.savez(npz, image=np.array([1, "a"], dtype=object))
    _one_line_error(_eval("--inputs", npz), str(npz), "'image'", "dtype object")


@pytest.mark.parametrize("cut", ["deflated", "stored"])
def test_truncated_member(tmp_path: Path, cut: str):
    """A member cut in half: a deflate stream that stops halfway through the size it declares, or a
    stored member declaring more bytes than the file holds (the central directory follows them)."""
    data = _npy_header((4, 1, 8, 8)) + np.ones((4, 1, 8, 8), np.float32).tobytes()
    npz = tmp_path / "truncated.npz"
    if cut == "deflated":
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        stream = c.compress(data) + c.flush()
        member = Member("image.npy", zipfile.ZIP_DEFLATED, stream[: len(stream) // 2], len(data), zlib.crc32(data))
    else:
        member = Member("image.npy", zipfile.ZIP_STORED, data[: len(data) // 2], len(data), zlib.crc32(data), len(data) * 2)
    _zip(npz, [member])
    _one_line_error(_eval("--inputs", npz), str(npz), "'image.npy'")


def test_member_with_a_bad_crc(tmp_path: Path):
    npz = tmp_path / "crc.npz"
    np.savez(npz, image=np.ones((4, 1, 8, 8), np.float32))
    data = bytearray(npz.read_bytes())
    data[data.index(np.float32(1).tobytes()) + 1] ^= 1  # in the first value: the member is stored, not deflated
    npz.write_bytes(bytes(data))
    _one_line_error(_eval("--inputs", npz), str(npz), "Bad CRC-32")


@pytest.mark.parametrize("content", [b"PK\x03\x04" + b"not a zip" * 20, b"plain text, not an archive\n" * 20])
def test_not_a_zip(tmp_path: Path, content: bytes):
    npz = tmp_path / "x.npz"
    npz.write_bytes(content)
    r = _eval("--inputs", npz)
    _one_line_error(r, str(npz), "not a")
    assert "pickle" not in r.output


def test_zero_samples(tmp_path: Path):
    npz = tmp_path / "none.npz"
    np.savez(npz, image=np.zeros((0, 1, 8, 8), np.float32), labels=np.zeros(0, np.int64))
    _one_line_error(_eval("--inputs", npz), str(npz), "holds no samples")


def test_labels_beside_a_scalar(tmp_path: Path):
    """A 0-d array where N samples belong, with labels: no count to compare them to."""
    npz = tmp_path / "scalar.npz"
    np.savez(npz, image=np.float32(1), labels=np.zeros(4, np.int64))
    _one_line_error(_eval("--inputs", npz), str(npz), "the model wants")


@pytest.mark.parametrize(("label", "words"), [(10**12, "label 1000000000000 at sample 2"), (-1, "label -1 at sample 2"),
                                              (10, "label 10 at sample 2 is not one of the model's 10 classes")])
def test_labels_out_of_range(tmp_path: Path, label: int, words: str):
    x, y = digits()
    y = y[:16].copy()
    y[2] = label
    npz = tmp_path / "labels.npz"
    np.savez(npz, image=x[:16], labels=y)
    _one_line_error(_eval("--inputs", npz), str(npz), words)


# --- .npy files --------------------------------------------------------------------------------------


def test_empty_npy(tmp_path: Path):
    npy = tmp_path / "empty.npy"
    npy.write_bytes(b"")
    _one_line_error(_eval("--inputs", npy), str(npy), "is empty")


# --- sizes declared past the budget ------------------------------------------------------------------


def test_a_4_gib_member_in_a_4_mb_npz_is_refused_before_reading(tmp_path: Path):
    _zeros_bomb(tmp_path / "small.npz", 3)  # the same construction at 3 MiB: a valid archive numpy reads back
    with np.load(tmp_path / "small.npz") as z:
        image = z["image"]
    assert image.shape == (3 << 12, 1, 8, 8) and not image.any()
    npz = tmp_path / "bomb.npz"
    _zeros_bomb(npz, 4096)
    assert npz.stat().st_size < 5 << 20
    p, seconds = _qpack("eval", SAMPLE, "--inputs", npz, "--bits", "8")
    _one_line_failure(p, str(npz), "member 'image.npy'", "expands")
    assert seconds < 30


@pytest.mark.parametrize("kind", ["npy", "npz"])
def test_a_header_declaring_4_gib_over_a_few_mb_is_refused(tmp_path: Path, kind: str):
    """The .npy header says [2**24, 1, 8, 8] float32 (4 GiB); 3 MiB of data follow."""
    data = _npy_header((1 << 24, 1, 8, 8)) + bytes(3 << 20)
    path = tmp_path / f"lies.{kind}"
    if kind == "npy":
        path.write_bytes(data)
    else:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("image.npy", data)
    p, seconds = _qpack("eval", SAMPLE, "--inputs", path, "--bits", "8")
    _one_line_failure(p, str(path), "[16777216, 1, 8, 8] float32 is 4294967296 bytes, past the 2 GiB")
    assert seconds < 30


def test_the_declared_size_must_match_the_data(tmp_path: Path):
    """Within the budget, a header and its data disagree: [64, 1, 8, 8] float32 over 1000 bytes."""
    npy = tmp_path / "short.npy"
    npy.write_bytes(_npy_header((64, 1, 8, 8)) + bytes(1000))
    _one_line_error(_eval("--inputs", npy), str(npy), "(16384 bytes), the data holds 1000 bytes")


# --- files that are not regular files ----------------------------------------------------------------


def test_a_fifo_as_inputs_does_not_hang(tmp_path: Path):
    fifo = tmp_path / "x.npy"
    os.mkfifo(fifo)
    try:
        p, _ = _qpack("eval", SAMPLE, "--inputs", fifo, timeout=30)  # no writer ever opens it
    except subprocess.TimeoutExpired:
        pytest.fail("eval waited on the FIFO")
    _one_line_failure(p, str(fifo), "is a FIFO, not a regular file")


def test_a_device_as_inputs_is_refused(tmp_path: Path):
    p, _ = _qpack("eval", SAMPLE, "--inputs", "/dev/zero", timeout=30)
    _one_line_failure(p, "/dev/zero", "not a regular file")


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_an_image_that_is_not_a_regular_file_is_refused(tmp_path: Path, kind: str):
    """Among real images: a FIFO named odd.png, or a link named odd.png to /dev/zero."""
    folder = tmp_path / "images"
    _digit_images(folder)
    odd = folder / "3" / "odd.png"
    if kind == "fifo":
        os.mkfifo(odd)
    else:
        odd.symlink_to("/dev/zero")
    try:
        p, _ = _qpack("eval", SAMPLE, "--images", folder, "--size", "8", timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("eval waited on the FIFO")
    _one_line_failure(p, str(odd), "not a regular file")


# --- images past the pixel budgets -------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(30000, 30000), (9000, 9000)])
def test_an_image_past_the_pixel_limit_is_refused_before_decoding(tmp_path: Path, width: int, height: int):
    """30000 x 30000 is past Pillow's own bomb limit; 9000 x 9000 under it and past qpack's."""
    folder = tmp_path / "images"
    folder.mkdir()
    _png(folder / "huge.png", width, height)
    p, seconds = _qpack("eval", SAMPLE, "--images", folder, "--size", "8")
    _one_line_failure(p, str(folder / "huge.png"), "pixels")
    assert seconds < 30


def test_images_past_the_byte_budget_are_refused_before_decoding(tmp_path: Path):
    """Ten images at --size 8192 would make 2.5 GiB of float32."""
    folder = tmp_path / "images"
    _digit_images(folder)
    p, seconds = _qpack("eval", SAMPLE, "--images", folder, "--size", "8192")
    _one_line_failure(p, str(folder), "10 images at 8192x8192x1", "past the 2 GiB")
    assert seconds < 30


def test_an_image_file_past_1_gib_is_refused_before_reading(tmp_path: Path):
    """A sparse 2 GiB file that starts as a WebP (Pillow reads a whole WebP file on opening it)."""
    folder = tmp_path / "images"
    folder.mkdir()
    webp = folder / "sparse.webp"
    with webp.open("wb") as f:
        f.write(b"RIFF\xff\xff\xff\x7fWEBPVP8X" + bytes(18))
        f.truncate(2 << 30)
    p, seconds = _qpack("eval", SAMPLE, "--images", folder, "--size", "8")
    _one_line_failure(p, str(webp), "2147483648 bytes, more than the 1 GiB")
    assert seconds < 30


@pytest.mark.parametrize(("option", "says"), [
    (["--std", "0"], "--std none of them 0"),
    (["--std", "1,0,1"], "--std gives 3 values; the model's images have 1 channel: give 1"),
    (["--mean", "1,2"], "--mean gives 2 values; the model's images have 1 channel: give 1"),
])
def test_image_normalization_that_fits_no_channel_or_divides_by_zero_is_refused(tmp_path: Path, option: list[str], says: str):
    """--std 0 made infinite inputs; a --mean or --std list longer than the model's channels spread the
    images over that many channels and failed later on the shape."""
    folder = tmp_path / "images"
    _digit_images(folder)
    p, _ = _qpack("eval", SAMPLE, "--images", folder, "--size", "8", *option)
    _one_line_failure(p, says)
