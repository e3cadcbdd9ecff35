"""The reader and `inspect` against mutated containers (tests/fuzz_qpk.py): a short run, and every input
that ever failed. The long run is bench/fuzz_qpk.py; FUZZ_INPUTS=N runs N inputs here instead of 300."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import fuzz_qpk as F

SHORT_RUN = int(os.environ.get("FUZZ_INPUTS", "300"))


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    return F.build_seeds(tmp_path_factory.mktemp("seeds"))


def test_seeds_read_cleanly(seeds: list[bytes], tmp_path: Path):
    """Every seed is a valid container: a mutant's failures come from its mutation."""
    for i, data in enumerate(seeds):
        out = F.run_input(F.write_input(tmp_path, data))
        assert (out.result, out.failure) == ("ok", None), (i, out.messages, out.failure)


def test_mutants_are_reproducible(seeds: list[bytes]):
    assert F.mutant(seeds, 12345) == F.mutant(seeds, 12345) != F.mutant(seeds, 12346)
    assert F.mutant(seeds, 7, {}) == F.mutant(seeds, 7)  # the seed cache changes nothing


def test_hand_built_zstd_frames(seeds: list[bytes]):
    import zstandard

    assert zstandard.ZstdDecompressor().decompress(F.zstd_frame(300_000, 300_000, 7)) == bytes([7]) * 300_000
    assert zstandard.frame_content_size(F.zstd_frame(10, 1 << 32)) == 1 << 32  # a frame may claim anything


def test_short_fuzz_run(seeds: list[bytes], tmp_path: Path):
    """Each input ends in success or a one-line QpackError, in time and within the allocation limit."""
    failures, results = [], set()
    cache: dict[int, F.Parts] = {}
    for n in range(SHORT_RUN):
        data = F.mutant(seeds, n, cache)
        # allocations traced for every 4th input, and for any other that grows the process or takes long
        out = F.run_input(F.write_input(tmp_path, data), trace=True if n % 4 == 0 else None)
        results.add(out.result)
        if out.failure:
            failures.append((n, F.save_failure(data, out, tmp_path / "failing"), out.failure))
    assert not failures, "\n".join(f"input #{n} (saved as {path}): {failure}" for n, path, failure in failures)
    assert results == {"ok", "FormatError"}  # the mutations reach both ends


@pytest.mark.parametrize("path", F.corpus_files(), ids=lambda p: p.name)
def test_corpus(path: Path):
    """Inputs that once failed (tests/corpus/qpk, named after how they failed) stay handled."""
    out = F.run_input(path)
    assert out.failure is None, out.failure
