"""Stops under load: the stop and kill tests run again and again beside CPU hogs (one per core), as a
loaded CI machine runs them; prints how many runs passed and how long each took.

    python bench/bench_stops.py --runs 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = "stop_mid_conversion or stop_at_every_point or kill_leaves_nothing"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--hogs", type=int, default=os.cpu_count() or 2, help="busy processes beside the tests")
    args = ap.parse_args()
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
    passed, times, failures = 0, [], []
    try:
        for i in range(args.runs):
            t = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_hostile.py", "-k", TESTS],
                               cwd=ROOT, capture_output=True, text=True)
            times.append(time.perf_counter() - t)
            if p.returncode == 0:
                passed += 1
            else:
                failures.append((i, p.stdout.strip().splitlines()[-1] if p.stdout.strip() else p.stderr[-200:]))
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    load = os.getloadavg()[0]
    print(f"stop tests ({TESTS}) beside {args.hogs} CPU hogs on {os.cpu_count()} CPUs, load {load:.1f}:")
    print(f"  {passed} of {args.runs} runs passed; median {statistics.median(times):.1f} s a run, max {max(times):.1f} s")
    for i, line in failures:
        print(f"  run {i}: {line}")


if __name__ == "__main__":
    main()
