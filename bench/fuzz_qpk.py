"""Fuzz the .qpk reader and `inspect` for a long run on every core; prints inputs per second and outcomes.

    python bench/fuzz_qpk.py --inputs 1000000 [--start 0] [--workers 2] [--trace-every 1]
    python bench/fuzz_qpk.py --entries 10000,100000,1000000    # inspect time against the entry count

Input number N is the same mutant on every machine (tests/fuzz_qpk.py), so a run can be split in
ranges (--start) and any input found again from its number. Each input runs the reader end to end
and inspect with and without verification; it fails on any exception other than a one-line
QpackError, on a warning, on more than 5 s, or on more than 1 GiB allocated at once (tracemalloc's
peak, and the process's peak resident size). tracemalloc makes a run several times slower: with
--trace-every N only every Nth input is traced, and any other input whose untraced run grew the
process by 64 MiB, took 0.5 s or failed. Failing inputs are saved to tests/corpus/qpk/, which a
test replays.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import os
import resource
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import fuzz_qpk as F  # noqa: E402

CHUNK = 250
HANG = 120  # seconds: an input still running then is stopped and counted as a failure
ADDRESS_SPACE = 6 << 30  # per worker: a runaway allocation fails there instead of swapping the machine

_seeds: list[bytes] = []
_cache: dict[int, F.Parts] = {}
_scratch = Path(tempfile.gettempdir())


class Hang(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise Hang(f"still running after {HANG} s")


def _init(seeds: list[bytes], scratch: str) -> None:
    global _seeds, _scratch
    _seeds, _scratch = seeds, Path(scratch)
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    signal.signal(signal.SIGALRM, _alarm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the pool
    F.run_input(_write(_seeds[0]))  # imports and first-use caches before anything is measured


def _write(data: bytes) -> Path:
    return F.write_input(_scratch, data)


@dataclass
class Tally:
    inputs: int = 0
    results: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: list[tuple[int, str, bytes]] = field(default_factory=list)
    slowest: tuple[float, int] = (0.0, -1)
    largest: tuple[int, int] = (0, -1)  # tracemalloc's peak
    resident: tuple[int, int] = (0, -1)  # growth of the resident peak
    traced: int = 0

    def add(self, other: Tally) -> None:
        self.inputs += other.inputs
        self.results.update(other.results)
        self.failures += other.failures
        self.slowest = max(self.slowest, other.slowest)
        self.largest = max(self.largest, other.largest)
        self.resident = max(self.resident, other.resident)
        self.traced += other.traced


def _chunk(job: tuple[int, int, int]) -> Tally:
    tally = Tally()
    first, end, every = job
    for n in range(first, end):
        try:
            data = F.mutant(_seeds, n, _cache)
        except Exception as e:  # a mutator bug: counted and shown, the run goes on
            tally.inputs += 1
            tally.results["MUTATOR"] += 1
            tally.failures.append((n, f"mutator: {type(e).__name__}: {e}", b""))
            continue
        path = _write(data)
        signal.alarm(HANG)
        try:
            out = F.run_input(path, trace=True if n % every == 0 else None)
        except Hang as e:  # raised outside a stage: between them
            out = F.Outcome("Hang", HANG, 0, str(e))
        finally:
            signal.alarm(0)
        tally.inputs += 1
        tally.results["FAILURE" if out.failure else out.result] += 1
        tally.slowest = max(tally.slowest, (out.seconds, n))
        tally.largest = max(tally.largest, (out.peak, n))
        tally.resident = max(tally.resident, (out.resident, n))
        tally.traced += out.traced
        if out.failure:
            tally.failures.append((n, out.failure, data))
    _write(b"").unlink(missing_ok=True)
    return tally


def _line(t: Tally, elapsed: float) -> str:
    counts = ", ".join(f"{k} {v:,}" for k, v in t.results.most_common())
    return (f"{t.inputs:,} inputs in {elapsed:,.0f} s ({t.inputs / max(elapsed, 1e-9):,.1f}/s): {counts}; "
            f"slowest {t.slowest[0]:.2f} s (#{t.slowest[1]}); largest allocation {t.largest[0] / 2**20:,.1f} MiB traced "
            f"(#{t.largest[1]}, {t.traced:,} inputs traced), {t.resident[0] / 2**20:,.1f} MiB resident (#{t.resident[1]})")


def fuzz(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        seeds = F.build_seeds(Path(tmp) / "seeds")
    print(f"{len(seeds)} seeds built in {time.perf_counter() - t0:.1f} s; inputs #{args.start}..#{args.start + args.inputs - 1}, "
          f"{args.workers} workers", flush=True)
    scratch = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    chunks = [(a, min(a + CHUNK, args.start + args.inputs), args.trace_every) for a in range(args.start, args.start + args.inputs, CHUNK)]
    total = Tally()
    t0 = last = time.perf_counter()
    ctx = mp.get_context("fork")
    with ctx.Pool(args.workers, _init, (seeds, scratch), maxtasksperchild=200) as pool:
        try:
            for tally in pool.imap_unordered(_chunk, chunks):
                total.add(tally)
                for n, failure, data in tally.failures:
                    saved = F.save_failure(data, F.Outcome("FAILURE", failure=failure), args.corpus) if data else "-"
                    print(f"FAILURE #{n} -> {saved}: {failure.splitlines()[0][:300]}", flush=True)
                now = time.perf_counter()
                if now - last >= args.every:
                    print(_line(total, now - t0), flush=True)
                    last = now
        except KeyboardInterrupt:
            pool.terminate()
            print("stopped", flush=True)
    elapsed = time.perf_counter() - t0
    print(_line(total, elapsed), flush=True)
    summary = {"inputs": total.inputs, "first": args.start, "seconds": round(elapsed, 1),
               "inputs_per_second": round(total.inputs / elapsed, 1), "results": dict(total.results.most_common()),
               "failures": len(total.failures), "slowest_seconds": round(total.slowest[0], 3), "slowest_input": total.slowest[1],
               "largest_traced_allocation_bytes": total.largest[0], "largest_traced_input": total.largest[1],
               "inputs_traced": total.traced, "largest_resident_growth_bytes": total.resident[0],
               "largest_resident_input": total.resident[1], "workers": args.workers, "trace_every": args.trace_every}
    print(json.dumps(summary), flush=True)
    if args.summary:
        args.summary.write_text(json.dumps(summary, indent=2) + "\n")
    os.rmdir(scratch) if not os.listdir(scratch) else None
    return 1 if total.failures else 0


def entries(counts: list[int]) -> None:
    """`inspect` (verification on, the table, and the --json text) on containers listing `count` tensors each."""
    from qpack.converter.inspect import describe, render_description
    from tests.test_hostile import many_entries

    with tempfile.TemporaryDirectory() as tmp:
        for count in counts:
            path = Path(tmp) / f"e{count}.qpk"
            t0 = time.perf_counter()
            many_entries(path, count)
            built = time.perf_counter() - t0
            t0, c0 = time.perf_counter(), time.process_time()
            info = describe(path)
            read = time.perf_counter() - t0
            render_description(info, F._null_console())
            shown = time.perf_counter() - t0
            json.dumps(info, indent=2)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
            print(f"{count:>9,} entries: {path.stat().st_size / 2**20:7.1f} MiB, built in {built:.1f} s; inspect "
                  f"{read:.1f} s to read and verify, {shown:.1f} s with the table, {wall:.1f} s with --json "
                  f"({cpu:.1f} s CPU, {wall / count * 1e6:.0f} us per entry); peak resident {peak:,.0f} MiB so far", flush=True)
            path.unlink()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--inputs", type=int, default=10_000)
    p.add_argument("--start", type=int, default=0, help="number of the first input")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--every", type=float, default=60.0, help="seconds between progress lines")
    p.add_argument("--corpus", type=Path, default=F.CORPUS, help="where failing inputs are saved")
    p.add_argument("--summary", type=Path, help="also write the final figures here as JSON")
    p.add_argument("--trace-every", type=int, default=1,
                   help="trace allocations of every Nth input (and of any input whose resident memory or time looks heavy); "
                        "1: every input")
    p.add_argument("--entries", type=lambda s: [int(x) for x in s.split(",")], help="time inspect on this many entries instead")
    args = p.parse_args(argv)
    if args.entries:
        entries(args.entries)
        return 0
    return fuzz(args)


if __name__ == "__main__":
    sys.exit(main())
