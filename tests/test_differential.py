"""The two .qpk readers against each other (tests/differential.py): mutated containers read by the
Python reader and by qpk.h, compiled once here with AddressSanitizer and UndefinedBehaviorSanitizer;
any file or tensor one accepts and the other refuses, or that both decode to other bits, fails.

A short run; bench/differential_qpk.py runs millions. DIFF_CASES=N runs N mutants here instead of 1,500.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import differential as D
from tests import fuzz_qpk as F
from tests.test_export_c import DECODER, DRIVER, SANITIZED

SHORT_RUN = int(os.environ.get("DIFF_CASES", "1500"))
CORPUS = Path(__file__).resolve().parent / "corpus"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    return F.build_seeds(tmp_path_factory.mktemp("seeds"))


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: qpk.h cannot be compiled")
    out = tmp_path_factory.mktemp("c") / "driver_asan"
    r = subprocess.run([gcc, *SANITIZED, f"-I{DECODER.parent}", "-o", str(out), str(DRIVER)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


def test_seeds_read_alike(seeds: list[bytes], driver: Path, tmp_path: Path):
    """Every seed is read by both readers to the same values (the zstd-coded ones as far as qpk.h decodes)."""
    paths = []
    for i, data in enumerate(seeds):
        paths.append(tmp_path / f"seed{i}.qpk")
        paths[-1].write_bytes(data)
    outcomes = [D.compare(D.python_side(p), c, D.metadata(p)) for p, c in zip(paths, D.c_sides(driver, paths))]
    assert set(outcomes) == {"agree: both read every tensor", "known: coded blob"}, outcomes


def test_readers_agree_on_mutants(seeds: list[bytes], driver: Path, tmp_path: Path):
    """Mutants 0..SHORT_RUN-1 of tests/fuzz_qpk.py (metadata trees, payloads and bytes, re-signed):
    no disagreement; the mutants reach every kind of agreement."""
    tally = D.Tally()
    cache: dict[int, F.Parts] = {}
    for start in range(0, SHORT_RUN, 500):
        tally.add(D.run(seeds, range(start, min(start + 500, SHORT_RUN)), driver, tmp_path, cache, keep=tmp_path / "disagreeing"))
    shown = "\n".join(f"input #{n}: {outcome}" for n, outcome in tally.disagreements[:20])
    assert not tally.disagreements, f"{len(tally.disagreements)} disagreements (saved in {tmp_path / 'disagreeing'}):\n{shown}"
    assert {k.split(": ", 1)[1] for k in tally.outcomes if k.startswith("known")} <= D.KNOWN.keys()
    if SHORT_RUN >= 1000:
        assert {"agree: both refuse the file", "agree: both read every tensor", "agree: both read the file and refuse a tensor",
                "known: coded blob", "known: zstd graph"} <= tally.outcomes.keys(), tally.outcomes


@pytest.mark.parametrize("path", sorted(CORPUS.glob("qpk*/*.qpk")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus_read_alike(path: Path, driver: Path):
    """Inputs that once broke a reader or set the two apart (tests/corpus/qpk, tests/corpus/qpk-differential)."""
    outcome = D.compare(D.python_side(path), D.c_sides(driver, [path])[0], D.metadata(path))
    assert not outcome.startswith("disagree"), outcome


def test_known_cases_are_recognised_from_the_file():
    """A KNOWN outcome needs the file to show its reason: the same answers without it are disagreements."""
    import msgpack

    refused = D.CSide(-9, [])
    plain = msgpack.packb({"format": "onnx", "tensors": [], "options": {"x": 1}})
    dup_top = msgpack.Packer().pack_map_header(2) + b"".join(map(msgpack.packb, ["format", "onnx", "format", "tflite"]))
    dup_informative = msgpack.Packer().pack_map_header(2) + b"".join(map(msgpack.packb, ["options", {}, "options", {}]))
    ext = msgpack.packb({"format": "onnx", "options": [msgpack.ExtType(5, b"x")]})
    stamp = msgpack.packb({"format": "onnx", "options": {"t": msgpack.Timestamp(0)}})
    read = D.PythonSide(True, True, [], [], [])
    assert D.compare(read, refused, plain) == "disagree: qpk.h refuses a file Python reads (-9)"
    assert D.compare(read, refused, dup_top) == "known: map key given twice"
    assert D.compare(read, refused, dup_informative).startswith("disagree")  # qpk.h skips that field: no reason to refuse
    assert D.compare(read, refused, ext) == D.compare(read, refused, stamp) == "known: extension type"
    one = D.PythonSide(True, True, ["a" * 64], [False], [False])
    codec, limit = D.QPK_E_CODEC, D.QPK_E_LIMIT
    assert D.compare(one, D.CSide(0, [(codec, None)]), plain) == f"disagree: qpk.h refuses a tensor Python decodes ({codec})"
    assert D.compare(D.PythonSide(True, True, ["a" * 64], [True], [False]), D.CSide(0, [(codec, None)]), plain) == "known: coded blob"
    assert D.compare(one, D.CSide(0, [(limit, None)]), plain).startswith("disagree")
    assert D.compare(one, D.CSide(0, [(0, "b" * 64)]), plain) == "disagree: decoded values differ"
    assert D.compare(D.PythonSide(True, True, [None], [False], [False]), D.CSide(0, [(0, "b" * 64)]), plain) == \
        "disagree: qpk.h decodes a tensor Python refuses"
    assert D.compare(D.PythonSide(False), D.CSide(0, []), plain) == "disagree: qpk.h reads a file Python refuses"
    assert D.compare(D.PythonSide(True, False, [], [], []), D.CSide(0, []), plain) == "known: zstd graph"
