"""What the exports cost to run in onnxruntime, beside onnxruntime's own quantizers; prints a table per model and PASS/MISS.

    python bench/bench_runtime.py [--quick] [--only NAME ...] [--budget S] [--rounds N] [--tmpdir DIR]
    python bench/bench_runtime.py --profile MODEL VARIANT [--runs N] [--top K]

Every variant of a model runs in onnxruntime's CPU provider as users get it: one thread
(intra_op_num_threads=1, inter_op_num_threads=1, ORT_SEQUENTIAL), default graph optimizations
(ORT_ENABLE_ALL). Per variant:
- bytes: the files the variant is (model and any external data), as a ratio to the float model's;
- RSS: the peak resident set of a fresh interpreter that loads the model into an InferenceSession and
  runs it --rss-runs times, as a ratio to the float model's child in the same run. The child reports its
  own VmHWM, which exec resets: its ru_maxrss would also count this process's peak, which Linux carries
  into a child through exec;
- latency: the variants take turns (float, A, B, ...; the order shuffled each round, seeded) in this
  process, one warmed session each, on the same input within a round; the ratio is the median over the
  rounds of a variant's time over float's in the same round, where the machine's load is the same for
  both; the ratio over each half of the rounds is shown beside it;
- cosine: of all outputs concatenated against the float model's, on the check draw (seed 1), the
  lowest over its inputs.
Variants: float; qpack (`convert` with a setting of SETTINGS, then `export` to a target of TARGETS, the
pairs of PAIRS; the fidelity goal is tuned on the calibration draw, seed 0, for that target, and once more
with --allow-float for onnx-int8); onnxruntime's quantizers
(ORT_VARIANTS), calibrated on the same draw. Each quantizer runs on the model as it is and on the model
pre-processed as onnxruntime asks (`quant_pre_process`, then opset 13 where older, for per-channel
scales); kept is the output that loads and leaves the smaller share of the float weights (PaddleOCR's
weights sit in Constant nodes, which the quantizers do not read). Where neither does, the variant is
listed as refused, with the reasons.
Inputs are drawn as bench_fidelity.py draws them (images uniform in [0, 1], the detector on rendered
text, audio N(0, 0.05^2) chunks of 512 with a zero state), one sample per inference. `rec-ext` is the
recognizer re-saved with its weights as external data (external_copy), as torch.onnx.export writes
larger models: what the float model and each export load when the source's weights sit outside it.

The summary judges qpack's fastest export that keeps cosine >= 0.99 against TARGET_* and against
onnxruntime's variants that keep it too. --profile runs one variant and the float model under
onnxruntime's profiler and prints their ops by total kernel time.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import qpack  # noqa: E402
from bench.bench_fidelity import Fixture, draw, packaged  # noqa: E402

MIN_COSINE = 0.99
TARGET_MEDIAN_LATENCY = 0.7  # qpack's fastest export at MIN_COSINE, median over the models, x float
TARGET_MAX_LATENCY = 1.0  # ... and on every model
TARGET_RSS = 0.5  # ... its peak RSS, x float, on every model
CALIBRATION, CHECK = 0, 1  # the seeds of the two draws
CAL_SAMPLES = 16  # what qpack's cosine goals ask for (FEW_INPUTS)
HWM_TAG = "VMHWM_KIB="
FLOAT = "float"


@dataclass(frozen=True)
class Subject:
    name: str  # what --only and --profile take
    fixture: Fixture  # where the file is and how its inputs are drawn; dist "" is a file of this repository
    external: bool = False  # measured as re-saved with its weights as ONNX external data (as torch.onnx.export writes)


# The models, one row each. An image model's free sides are the Fixture's size; batch 1 per inference.
MODELS: tuple[Subject, ...] = (
    Subject("digits", Fixture("digits sample", "", "samples/digits_cnn.onnx", "image")),
    Subject("cls", Fixture("ocr cls", "rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                           "image", (48, 192))),
    Subject("det", Fixture("ocr det", "rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                           "text", (128, 256))),
    Subject("rec", Fixture("ocr rec", "rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                           "image", (48, 320))),
    Subject("rec-ext", Fixture("ocr rec", "rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                               "image", (48, 320)), external=True),
    Subject("silero", Fixture("silero op15", "silero-vad", "silero_vad/data/silero_vad_16k_op15.onnx", "audio")),
)
QUICK_MODELS = ("digits", "cls")

# qpack: each convert setting is exported to each target. A new export target is one more name here.
TARGETS = ("onnx-qdq", "onnx-fast", "onnx-matmulnbits", "onnx-matmulnbits-int8", "onnx-int8")
GOAL = "cos.99"  # a setting tuned for the target it is exported to
GOAL_FLOAT = "cos.99 +float"  # the same with --allow-float
BLOCKS_TFLITE = "sym4 b32"  # made --for tflite: blocks where it runs them
SETTINGS: dict[str, dict[str, Any]] = {
    "sym8 pc": {"bits": 8, "scheme": "sym", "per_channel": True},
    "sym4 pc": {"bits": 4, "scheme": "sym", "per_channel": True},
    GOAL: {"min_cosine": MIN_COSINE},
    GOAL_FLOAT: {"min_cosine": MIN_COSINE, "allow_float": True},
    # int4 blocks of 32 where TFLite runs them (dense filters), the other weights per channel (bench_litert)
    BLOCKS_TFLITE: {"bits": 4, "scheme": "sym", "group_size": 32, "target": "tflite"},
}
# every setting to every target, but the goal that may keep tensors in float: onnx-int8's alone, where a model's
# integer nodes keep 0.99 only beside float weights (the VAD's LSTM); elsewhere it is the goal itself
PAIRS = (*itertools.product([s for s in SETTINGS if s not in (GOAL_FLOAT, BLOCKS_TFLITE)], TARGETS), (GOAL_FLOAT, "onnx-int8"))
QPACK = "qpack "
ORT = "ort "


# --- building the variants ---------------------------------------------------------------------------


class Refused(Exception):
    """A quantizer that would not make the variant; the message is the reason shown in the table."""


@dataclass
class Variant:
    name: str
    files: list[Path] = field(default_factory=list)  # the model file first
    refused: str = ""
    note: str = ""  # how it was made, when not as named (pre-processed)

    @property
    def path(self) -> Path:
        return self.files[0]


def first_line(e: BaseException) -> str:
    """The reason in an exception, without onnxruntime's prefix and the temporary path."""
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : (Load model from \S+ failed:)?", "", str(e).strip())
    text = re.sub(r"(This is an )?[Ii]nvalid model\. ", "", text)
    lines = text.strip().splitlines()
    line = lines[0] if lines else type(e).__name__
    line = line.rsplit(", Error ", 1)[-1]  # onnx's checker names the node first, then the error
    return line if len(line) <= 200 else line[:199] + "..."


def slug(text: str) -> str:
    return re.sub(r"\W+", "_", text)


def model_path(s: Subject) -> Path:
    fx = s.fixture
    path = ROOT / fx.relpath if not fx.dist else packaged(fx.dist, fx.relpath)
    if path is None or not path.is_file():
        raise Refused(f"{fx.relpath} not installed ({fx.dist or 'this repository'})")
    return path


def target_of(named: str) -> str:
    """The export target of a pair's target column ("TARGET --integer-io": the target and a flag)."""
    return named.split()[0]


def qpack_variants(src: Path, cal: Path, out: Path, only: str | None = None,
                   pairs: Iterable[tuple[str, str]] = PAIRS,
                   suffix: str = ".onnx") -> list[Variant]:
    """Each (setting of SETTINGS, export target) pair, named `qpack SETTING -> TARGET` (exported to a file
    ending in `suffix`); `only` makes that one alone. A target that runs the model is calibrated on `cal`."""
    from qpack.converter.export import TARGETS as EXPORTS

    found = []
    fixed: dict[str, Path | str] = {}  # a fixed setting's container serves every target
    inputs = None
    for setting, named in pairs:
        target, flags = target_of(named), named.split()[1:]  # --integer-io: the export's integer inputs and outputs
        opts = SETTINGS[setting]
        v = Variant(f"{QPACK}{setting} -> {named}")
        if only not in (None, v.name):
            continue
        found.append(v)
        tag = slug(f"{setting}_{named}")
        try:
            if "min_cosine" in opts:
                inputs = inputs or qpack.load_inputs(src, inputs=cal)
                qpk: Path | str = out / f"{tag}.qpk"
                qpack.convert(src, qpk, target=target, inputs=inputs, **opts)
            else:
                if setting not in fixed:
                    try:
                        fixed[setting] = out / f"{slug(setting)}.qpk"
                        qpack.convert(src, fixed[setting], **opts)
                    except qpack.QpackError as e:
                        fixed[setting] = f"convert: {first_line(e)}"
                qpk = fixed[setting]
            if isinstance(qpk, str):
                raise Refused(qpk)
            calibration = {"inputs": cal} if EXPORTS[target].calibrated else {}
            done = qpack.export(qpk, target, out / f"{tag}{suffix}", integer_io="--integer-io" in flags, **calibration)
            v.files = list(done.files)
        except qpack.QpackError as e:
            v.refused = first_line(e)
        except Refused as e:
            v.refused = str(e)
    return found


class Feeds:
    """onnxruntime's CalibrationDataReader over the calibration draw, one sample per call."""

    def __init__(self, samples: list[dict[str, NDArray]]) -> None:
        self.samples = iter(samples)

    def get_next(self) -> dict[str, NDArray] | None:
        return next(self.samples, None)


def _dynamic(src: Path, out: Path, cal: list[dict[str, NDArray]]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(src, out, weight_type=QuantType.QInt8)


def _static(src: Path, out: Path, cal: list[dict[str, NDArray]]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    quantize_static(src, out, Feeds(cal), quant_format=QuantFormat.QDQ, per_channel=True, calibrate_method=CalibrationMethod.MinMax)


def _nbits(algo: str, accuracy_level: int | None = None) -> Callable[[Path, Path, list[dict[str, NDArray]]], None]:
    """MatMulNBitsQuantizer at 4 bits, symmetric, blocks of 32: its default algorithm (round to nearest,
    in onnxruntime's C++), the RTN config (round to nearest through the neural_compressor port) or HQQ."""
    def make(src: Path, out: Path, cal: list[dict[str, NDArray]]) -> None:
        from onnxruntime.quantization import matmul_nbits_quantizer as mnb

        configs = {"default": lambda: None, "RTN": mnb.RTNWeightOnlyQuantConfig,
                   "HQQ": lambda: mnb.HQQWeightOnlyQuantConfig(block_size=32, bits=4)}
        q = mnb.MatMulNBitsQuantizer(str(src), bits=4, block_size=32, is_symmetric=True, accuracy_level=accuracy_level,
                                     algo_config=configs[algo]())
        q.process()
        q.model.save_model_to_file(str(out), False)

    return make


# onnxruntime's quantizers, each (model, output, calibration samples) -> None, writing `output`.
ORT_VARIANTS: dict[str, Callable[[Path, Path, list[dict[str, NDArray]]], None]] = {
    "dynamic int8": _dynamic,
    "static QDQ int8 pc": _static,
    "MatMulNBits b32": _nbits("default"),
    "MatMulNBits b32 acc4": _nbits("default", accuracy_level=4),
    "MatMulNBits RTN b32": _nbits("RTN"),
    "MatMulNBits HQQ b32": _nbits("HQQ"),
}


def float_values(path: Path) -> int:
    """Float values held in initializers and Constant nodes, subgraphs included: the weights left unquantized."""
    import onnx

    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}

    def count(graph: Any) -> int:
        n = sum(int(np.prod(t.dims)) for t in graph.initializer if t.data_type in floats)
        for node in graph.node:
            for a in node.attribute:
                if node.op_type == "Constant" and a.HasField("t") and a.t.data_type in floats:
                    n += int(np.prod(a.t.dims))
                n += sum(count(g) for g in ([a.g] if a.HasField("g") else []) + list(a.graphs))
        return n

    return count(onnx.load(str(path), load_external_data=False).graph)


PRE = "pre-processed"
PRE_NO_SYMBOLIC = "pre-processed*"  # * without symbolic shape inference, which failed
PER_CHANNEL_OPSET = 13  # DequantizeLinear takes an axis (per-channel scales) from opset 13 on


def pre_process(src: Path, out: Path) -> tuple[Path, str]:
    """The model as onnxruntime asks for it before quantization: its pre-processing (optimization and
    shape inference), then at opset 13 if older, so that per-channel scales are valid; and how it went."""
    import onnx
    import onnx.version_converter
    from onnxruntime.quantization.shape_inference import quant_pre_process

    how = PRE
    here = os.getcwd()
    os.chdir(out.parent)  # where a failed symbolic shape inference leaves sym_shape_infer_temp.onnx
    try:
        quant_pre_process(str(src), str(out))
    except Exception:  # PaddleOCR's graphs stop symbolic shape inference (an assertion on Concat, incomplete shapes)
        quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
        how = PRE_NO_SYMBOLIC
    finally:
        os.chdir(here)
    model = onnx.load(str(out))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), PER_CHANNEL_OPSET)
    if opset < PER_CHANNEL_OPSET:
        onnx.save(onnx.version_converter.convert_version(model, PER_CHANNEL_OPSET), str(out))
        how += f", opset {opset}->{PER_CHANNEL_OPSET}"
    return out, how


def ort_variants(src: Path, cal: list[dict[str, NDArray]], out: Path) -> list[Variant]:
    """Each of ORT_VARIANTS on the model as it is and on the pre-processed model; kept: the one that
    leaves the smaller share of its float weights (ties: as it is)."""
    import logging

    for name in ("", "onnxruntime.quantization.matmul_nbits_quantizer"):  # the quantizers log every node
        logging.getLogger(name).setLevel(logging.ERROR)
    inputs: list[tuple[str, Path | str]] = [("", src)]
    try:
        inputs.append(pre_process(src, out / "pre.onnx")[::-1])
    except Exception as e:
        inputs.append((PRE, f"pre-process: {first_line(e)}"))
    found = []
    for name, make in ORT_VARIANTS.items():
        v = Variant(ORT + name)
        found.append(v)
        why: list[str] = []
        kept: tuple[float, str, Path] | None = None  # (share of float weights left, how, file)
        for i, (how, model) in enumerate(inputs):
            if isinstance(model, str):
                why.append(model)
                continue
            dst = out / f"{slug(name)}.{i}.onnx"
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # the RTN quantizer draws a progress bar
                    make(model, dst, cal)
            except Exception as e:
                why.append(f"{how or 'as it is'}: {first_line(e)}")
                continue
            try:
                session(dst)
            except Exception as e:
                why.append(f"{how or 'as it is'}: the output does not load: {first_line(e)}")
                continue
            left = float_values(dst) / max(float_values(model), 1)
            if left > 0.99:
                why.append(f"{how or 'as it is'}: no weight quantized")
            elif kept is None or left < kept[0] - 1e-9:
                kept = (left, how, dst)
        if kept is None:
            v.refused = "; ".join(why)
            continue
        v.note, dst = kept[1], kept[2]
        v.files = [dst, *sorted(p for p in out.glob(f"{dst.name}*") if p != dst)]  # and any external data
    return found


# --- measuring --------------------------------------------------------------------------------------


def session_options(profile: Path | None = None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if profile is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile)
    return opts


def session(path: Path, profile: Path | None = None) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(profile), providers=["CPUExecutionProvider"])


RSS_CHILD = f"""\
import re, sys
import numpy as np
import onnxruntime as ort
path, feeds, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
if path != "-":
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    with np.load(feeds) as z:
        data = {{k: z[k] for k in z.files}}
    for _ in range(runs):
        s.run(None, data)
print('{HWM_TAG}' + re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))
"""


def peak_rss(path: Path | None, feeds: Path, runs: int) -> int:
    """Peak resident bytes of a fresh interpreter that loads `path` and runs it; None loads nothing."""
    proc = subprocess.run([sys.executable, "-c", RSS_CHILD, str(path or "-"), str(feeds), str(runs)], capture_output=True, text=True)
    got = re.search(HWM_TAG + r"(\d+)", proc.stdout)
    if proc.returncode != 0 or got is None:
        raise RuntimeError(f"RSS child failed: {(proc.stderr.strip().splitlines() or ['exit ' + str(proc.returncode)])[-1]}")
    return int(got.group(1)) * 1024


def cosine(a: list[NDArray], b: list[NDArray]) -> float:
    x = np.concatenate([np.asarray(t, np.float64).ravel() for t in a])
    y = np.concatenate([np.asarray(t, np.float64).ravel() for t in b])
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-300))


def interleaved(sessions: dict[str, Any], feeds: list[dict[str, NDArray]], rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of each round's run per session: every round runs each session once on the same input,
    in an order shuffled per round (seeded) so that no variant keeps the slot after another."""
    times: dict[str, list[float]] = {k: [] for k in sessions}
    order, rng = list(sessions), np.random.default_rng(0)
    for r in range(warmup + rounds):
        f = feeds[r % len(feeds)]
        rng.shuffle(order)
        for k in order:
            t = time.perf_counter()
            sessions[k].run(None, f)
            if r >= warmup:
                times[k].append(time.perf_counter() - t)
    return times


# --- one model ----------------------------------------------------------------------------------------


@dataclass
class Row:
    variant: Variant
    bytes: int = 0
    rss: int = 0
    latency: float = 0.0  # median seconds
    ratio: float = 0.0  # median over rounds of its time / float's time in the same round
    halves: tuple[float, float] = (0.0, 0.0)  # the ratio over each half of the rounds: how steady the machine was
    cosine: float = float("nan")
    error: str = ""  # a variant built but failing to load or run


def timed(sessions: dict[str, Any], check: list[dict[str, NDArray]], rows: list[Row], rounds: int | None, budget: float) -> int:
    """Each row's median latency and its median ratio to the float model's in the same round (and over each
    half of the rounds): as many rounds as fit in `budget` seconds (20 to 500) unless `rounds`. Returns the rounds."""
    warm = interleaved(sessions, check, rounds=3, warmup=2)
    n = rounds or max(20, min(500, int(budget / max(sum(statistics.median(v) for v in warm.values()), 1e-9))))
    times = interleaved(sessions, check, rounds=n, warmup=5)
    for row in rows:
        got = times.get(row.variant.name)
        if got:  # ratios within a round, where the machine's load is the same for every variant
            ratios = [a / b for a, b in zip(got, times[FLOAT])]
            row.latency, row.ratio = statistics.median(got), statistics.median(ratios)
            row.halves = (statistics.median(ratios[: n // 2]), statistics.median(ratios[n // 2:]))
    return n


def one_sample(batch: dict[str, NDArray], i: int) -> dict[str, NDArray]:
    """Sample i of a drawn batch: batched inputs sliced, the others (a sample rate, a recurrent state) whole."""
    n = max(len(a) for a in batch.values() if a.ndim)
    return {k: a[i:i + 1] if a.ndim and len(a) == n and k != "state" else a for k, a in batch.items()}


def draws(s: Subject, path: Path, samples: int) -> tuple[dict[str, NDArray], list[dict[str, NDArray]], list[dict[str, NDArray]]]:
    """(the calibration draw as a batch, its samples, the check draw's samples), a sample being one inference's feeds."""
    from qpack.converter.runtime import open_runner

    specs = open_runner(path).inputs
    cal_batch = draw(specs, s.fixture, CALIBRATION, CAL_SAMPLES)
    check_batch = draw(specs, s.fixture, CHECK, samples)
    return cal_batch, [one_sample(cal_batch, i) for i in range(CAL_SAMPLES)], [one_sample(check_batch, i) for i in range(samples)]


def external_copy(src: Path, out: Path) -> list[Path]:
    """`src` re-saved with every weight (Constant nodes made initializers) in one external data file beside
    it: the model file, then the data file."""
    import onnx

    m = onnx.load(src)
    kept, made = [], []
    for n in m.graph.node:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            t = n.attribute[0].t
            t.name = n.output[0]
            made.append(t)
        else:
            kept.append(n)
    del m.graph.node[:]
    m.graph.node.extend(kept)
    m.graph.initializer.extend(made)
    path, data = out / src.name, out / (src.stem + ".data")
    onnx.save(m, path, save_as_external_data=True, all_tensors_to_one_file=True, location=data.name, size_threshold=1024)
    return [path, data]


def build(s: Subject, tmp: Path, samples: int, only: str | None = None) -> tuple[list[Variant], list[dict[str, NDArray]]]:
    """The model's variants (float first) and its check samples; `only` builds that variant alone (and float)."""
    files = [model_path(s)]
    if s.external:
        (tmp / "float").mkdir(exist_ok=True)
        files = external_copy(files[0], tmp / "float")
    src = files[0]
    cal_batch, cal, check = draws(s, src, samples)
    cal_npz = tmp / f"{s.name}.cal.npz"
    np.savez(cal_npz, **cal_batch)
    found = [Variant(FLOAT, files)]
    if only is None or only.startswith(QPACK):
        d = tmp / "qpack"
        d.mkdir(exist_ok=True)
        found += qpack_variants(src, cal_npz, d, only)
    if only is None or only.startswith(ORT):
        d = tmp / "ort"
        d.mkdir(exist_ok=True)
        found += [v for v in ort_variants(src, cal, d) if only in (None, v.name)]
    return found, check


def measure(s: Subject, tmp: Path, samples: int, rounds: int | None, budget: float, rss_runs: int) -> list[Row]:
    t0 = time.perf_counter()
    variants, check = build(s, tmp, samples)
    print(f"  built {len(variants)} variants in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = [Row(v) for v in variants]
    feeds = tmp / "feeds.npz"
    np.savez(feeds, **check[0])
    sessions: dict[str, Any] = {}
    ref: list[list[NDArray]] = []
    for row in rows:
        v = row.variant
        if v.refused:
            continue
        row.bytes = sum(p.stat().st_size for p in v.files)
        try:
            sess = session(v.path)
            outs = [sess.run(None, f) for f in check]
            ref = ref or outs
            row.cosine = min(cosine(a, b) for a, b in zip(ref, outs))
            row.rss = peak_rss(v.path, feeds, rss_runs)
        except Exception as e:
            row.error = first_line(e)
            continue
        sessions[v.name] = sess
    n = timed(sessions, check, rows, rounds, budget)
    print(f"  {n} rounds of {len(sessions)} sessions; {time.perf_counter() - t0:.0f} s for the model", flush=True)
    return rows


# --- reporting -----------------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print("| " + " | ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(r, widths))) + " |", flush=True)


def model_table(rows: list[Row], bare: int) -> None:
    base = rows[0]
    out, notes = [], []
    for r in rows:
        v = r.variant
        name = v.name + (f" ({v.note})" if v.note else "")
        if v.refused or r.error:
            notes.append(f"({len(notes) + 1}) {v.name}: {v.refused or r.error}")
            out.append([name, f"{'refused' if v.refused else 'failed'} ({len(notes)})", "", "", "", "", ""])
            continue
        halves = "/".join(f"{h:.2f}" for h in r.halves)
        out.append([name, f"{r.bytes / base.bytes:.3f}", f"{r.rss / base.rss:.2f}", f"{(r.rss - bare) / 2**20:.1f}",
                    f"{r.ratio:.2f}", halves, f"{r.cosine:.6f}"])
    print(f"float: {base.bytes:,} bytes, peak RSS {base.rss / 2**20:.1f} MiB, median {base.latency * 1e3:.3f} ms")
    table(["variant", "bytes ratio", "RSS ratio", "RSS over bare, MiB", "latency ratio", "(halves)", "min cosine"], out)
    if any(r.variant.note == PRE_NO_SYMBOLIC for r in rows):
        notes.append("pre-processed*: without symbolic shape inference, which fails on this model")
    for n in notes:
        print(n)


def ran(rows: list[Row], prefix: str) -> list[Row]:
    """The variants of one maker (QPACK or ORT) that ran and keep MIN_COSINE."""
    return [r for r in rows if r.variant.name.startswith(prefix) and not r.variant.refused and not r.error and r.cosine >= MIN_COSINE]


def summary(results: dict[str, list[Row]]) -> None:
    print(f"\nsummary: qpack's fastest export at min cosine >= {MIN_COSINE} per model, against float and against "
          f"onnxruntime's quantizers at min cosine >= {MIN_COSINE} (the same bar)")
    verdicts: list[bool] = []

    def judge(text: str, ok: bool | None) -> None:
        if ok is not None:
            verdicts.append(ok)
        print(f"  {'n/a ' if ok is None else 'PASS' if ok else 'MISS'}  {text}")

    lat: list[float] = []
    for name, rows in results.items():
        base, ours, peers = rows[0], ran(rows, QPACK), ran(rows, ORT)
        if not ours:
            judge(f"{name}: no qpack export keeps {MIN_COSINE}", False)
            continue
        fast = min(ours, key=lambda r: r.ratio)
        small = min(ours, key=lambda r: r.bytes)
        lr, rr = fast.ratio, fast.rss / base.rss
        if not next((m.external for m in MODELS if m.name == name), False):  # a model counts once in the median
            lat.append(lr)
        print(f"  {name}: fastest {fast.variant.name}: latency {lr:.2f}x, RSS {rr:.2f}x, bytes {fast.bytes / base.bytes:.3f}x, "
              f"cosine {fast.cosine:.6f}")
        judge(f"{name} latency {lr:.2f}x float <= {TARGET_MAX_LATENCY}", lr <= TARGET_MAX_LATENCY)
        judge(f"{name} peak RSS {rr:.2f}x float <= {TARGET_RSS}", rr <= TARGET_RSS)
        if not peers:
            judge(f"{name}: no onnxruntime variant keeps {MIN_COSINE}", None)
            continue
        ps, pf = min(peers, key=lambda r: r.bytes), min(peers, key=lambda r: r.ratio)
        judge(f"{name} smallest file {small.variant.name} {small.bytes:,} <= onnxruntime's smallest {ps.variant.name} {ps.bytes:,}",
              small.bytes <= ps.bytes)
        judge(f"{name} latency {lr:.2f}x <= onnxruntime's fastest {pf.variant.name} {pf.ratio:.2f}x", lr <= pf.ratio)
    if lat:
        med = statistics.median(lat)
        judge(f"median latency over {len(lat)} models {med:.2f}x float <= {TARGET_MEDIAN_LATENCY}", med <= TARGET_MEDIAN_LATENCY)
    print(f"  {sum(verdicts)} PASS, {len(verdicts) - sum(verdicts)} MISS")


# --- profile ---------------------------------------------------------------------------------------------


def variant_names() -> list[str]:
    return [FLOAT, *(f"{QPACK}{s} -> {t}" for s, t in PAIRS), *(ORT + n for n in ORT_VARIANTS)]


def profile(s: Subject, variant: str, tmp: Path, runs: int, top: int) -> None:
    """The ops of the variant and of the float model by total kernel time over `runs` inferences (onnxruntime's profiler)."""
    variants, check = build(s, tmp, 4, only=variant)
    for v in variants if variant == FLOAT else variants[:1] + [v for v in variants if v.name == variant]:
        if v.refused:
            sys.exit(f"bench_runtime: {v.name} refused: {v.refused}")
        sess = session(v.path, profile=tmp / slug(v.name))
        for i in range(runs):
            sess.run(None, check[i % len(check)])
        trace = json.loads(Path(sess.end_profiling()).read_text())
        by_op: dict[str, list[float]] = {}
        for ev in trace:
            if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
                by_op.setdefault(ev["args"]["op_name"], []).append(ev["dur"])
        total = sum(sum(d) for d in by_op.values())
        print(f"\n{s.name} {v.name}: {runs} runs, {total / runs / 1e3:.3f} ms of kernels per run")
        rows = sorted(by_op.items(), key=lambda kv: -sum(kv[1]))[:top]
        table(["op", "nodes", "ms per run", "share"],
              [[op, f"{len(d) // runs}", f"{sum(d) / runs / 1e3:.3f}", f"{sum(d) / total:.1%}"] for op, d in rows])


# --- the run -----------------------------------------------------------------------------------------------


def main() -> None:
    names = [s.name for s in MODELS]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"smoke run: {', '.join(QUICK_MODELS)}, fewer rounds and inputs")
    ap.add_argument("--only", nargs="+", choices=names, help="these models only")
    ap.add_argument("--rounds", type=int, help="latency rounds (default: as many as fit in --budget per model, 20..500)")
    ap.add_argument("--budget", type=float, help="seconds of latency rounds per model (default 40; --quick 5)")
    ap.add_argument("--samples", type=int, help="inputs in the check draw (default 8; --quick 4)")
    ap.add_argument("--rss-runs", type=int, default=20, help="inferences of each RSS child (default 20)")
    ap.add_argument("--profile", nargs=2, metavar=("MODEL", "VARIANT"), help="profile one variant of one model instead")
    ap.add_argument("--runs", type=int, default=200, help="inferences under --profile (default 200)")
    ap.add_argument("--top", type=int, default=10, help="ops shown by --profile (default 10)")
    ap.add_argument("--tmpdir", type=Path, help="where the variants and inputs are written")
    args = ap.parse_args()
    samples = args.samples or (4 if args.quick else 8)
    budget = args.budget or (5.0 if args.quick else 40.0)
    if min(samples, args.rss_runs, args.runs, args.top, args.rounds or 1) < 1 or budget <= 0:
        ap.error("--samples, --rss-runs, --runs, --top, --rounds and --budget must be positive")
    import onnxruntime as ort

    tmp = Path(tempfile.mkdtemp(prefix="qpack-runtime-", dir=args.tmpdir))
    try:
        if args.profile:
            name, variant = args.profile
            if name not in names:
                ap.error(f"--profile: no model {name!r}, expected one of: {', '.join(names)}")
            if variant not in variant_names():
                ap.error(f"--profile: no variant {variant!r}, expected one of: {', '.join(variant_names())}")
            profile(next(s for s in MODELS if s.name == name), variant, tmp, args.runs, args.top)
            return
        chosen = [s for s in MODELS if s.name in (args.only or (QUICK_MODELS if args.quick else names))]
        print(f"onnxruntime {ort.__version__}, numpy {np.__version__}, "
              f"python {sys.version.split()[0]}; {os.cpu_count()} CPUs, one thread per session", flush=True)
        empty = tmp / "empty.npz"
        np.savez(empty)
        bare = peak_rss(None, empty, 0)
        print(f"bare: a child that imports onnxruntime and loads nothing, peak RSS {bare / 2**20:.1f} MiB", flush=True)
        t0 = time.perf_counter()
        results: dict[str, list[Row]] = {}
        for s in chosen:
            print(f"\n{s.name}: {s.fixture.relpath}", flush=True)
            d = tmp / s.name
            d.mkdir()
            try:
                results[s.name] = measure(s, d, samples, args.rounds, budget, args.rss_runs)
            except Refused as e:
                print(f"  skipped: {e}")
                continue
            model_table(results[s.name], bare)
            shutil.rmtree(d, ignore_errors=True)
        summary(results)
        print(f"  {time.perf_counter() - t0:.0f} s in all")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
