"""Differential fuzz of the two .qpk readers for a long run: the Python reader against qpk.h on mutants.

    python bench/differential_qpk.py --cases 1000000 [--seconds 3600] [--start 0] [--workers 2] [--fast]

Mutant N is the same file on every machine (tests/fuzz_qpk.py), so a run can be split in ranges
(--start) and any input found again from its number. Each is read by the Python reader (open,
checksums, graph, every tensor dequantized) and by qpk.h (tests/c/qpk_driver.c `diff`: qpk_open,
qpk_get_tensor, qpk_unpack, whole and ranged decodes), compiled with AddressSanitizer and
UndefinedBehaviorSanitizer (--fast: -O2 only), and their verdicts compared (tests/differential.py).
Prints the outcomes by kind, agreements, the cases qpk.h reads otherwise by design (KNOWN) and
disagreements, and the cases per second; disagreeing inputs are saved to tests/corpus/qpk-differential/,
which tests/test_differential.py replays.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import differential as D  # noqa: E402
from tests import fuzz_qpk as F  # noqa: E402
from tests.test_export_c import DECODER, DRIVER, SANITIZED, STRICT  # noqa: E402

CHUNK = 250
KEEP = Path(__file__).resolve().parent.parent / "tests" / "corpus" / "qpk-differential"

_seeds: list[bytes] = []
_cache: dict[int, F.Parts] = {}
_driver = Path()
_scratch = Path()
_keep: Path | None = None


def _init(seeds: list[bytes], driver: str, scratch: str, keep: str | None) -> None:
    global _seeds, _driver, _scratch, _keep
    _seeds, _driver, _keep = seeds, Path(driver), Path(keep) if keep else None
    _scratch = Path(tempfile.mkdtemp(dir=scratch))


def _chunk(job: tuple[int, int]) -> D.Tally:
    return D.run(_seeds, range(*job), _driver, _scratch, _cache, _keep)


def _line(t: D.Tally, elapsed: float) -> str:
    return f"{t.cases:,} cases in {elapsed:,.0f} s ({t.cases / max(elapsed, 1e-9):,.1f}/s), {len(t.disagreements):,} disagreements"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=100_000)
    p.add_argument("--seconds", type=float, default=None, help="stop after this long, whatever --cases says")
    p.add_argument("--start", type=int, default=0, help="number of the first mutant")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--fast", action="store_true", help="qpk.h at -O2 without the sanitizers")
    p.add_argument("--every", type=float, default=60.0, help="seconds between progress lines")
    p.add_argument("--keep", type=Path, default=KEEP, help="where disagreeing inputs are saved")
    p.add_argument("--summary", type=Path, help="also write the final figures here as JSON")
    args = p.parse_args(argv)
    gcc = shutil.which("gcc")
    if gcc is None:
        sys.exit("gcc is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        seeds = F.build_seeds(Path(tmp) / "seeds")
        driver = Path(tmp) / "driver"
        subprocess.run([gcc, *(STRICT if args.fast else SANITIZED), f"-I{DECODER.parent}", "-o", str(driver), str(DRIVER)], check=True)
        print(f"{len(seeds)} seeds and the driver ({'-O2' if args.fast else 'sanitizers'}) built in {time.perf_counter() - t0:.1f} s; "
              f"mutants #{args.start}..#{args.start + args.cases - 1}, {args.workers} workers", flush=True)
        jobs = [(a, min(a + CHUNK, args.start + args.cases)) for a in range(args.start, args.start + args.cases, CHUNK)]
        total = D.Tally()
        t0 = last = time.perf_counter()
        with mp.get_context("fork").Pool(args.workers, _init, (seeds, str(driver), tmp, str(args.keep))) as pool:
            for tally in pool.imap_unordered(_chunk, jobs):
                total.add(tally)
                for n, outcome in tally.disagreements:
                    print(f"DISAGREEMENT #{n}: {outcome}", flush=True)
                now = time.perf_counter()
                if now - last >= args.every:
                    print(_line(total, now - t0), flush=True)
                    last = now
                if args.seconds is not None and now - t0 >= args.seconds:
                    pool.terminate()
                    break
        elapsed = time.perf_counter() - t0
    print(_line(total, elapsed))
    for kind in ("agree", "known", "skipped", "disagree"):
        rows = [(k, v) for k, v in total.outcomes.most_common() if k.startswith(kind)]
        for k, v in rows:
            print(f"  {v:>10,}  {k}")
    summary = {"cases": total.cases, "first": args.start, "seconds": round(elapsed, 1),
               "cases_per_second": round(total.cases / elapsed, 1), "outcomes": dict(total.outcomes.most_common()),
               "disagreements": [n for n, _ in total.disagreements], "sanitizers": not args.fast, "workers": args.workers}
    print(json.dumps(summary))
    if args.summary:
        args.summary.write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if total.disagreements else 0


if __name__ == "__main__":
    sys.exit(main())
