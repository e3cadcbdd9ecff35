"""qpack: data-free n-bit weight quantization of ONNX and TFLite models into the .qpk container."""

from qpack.converter import __version__

__all__ = ["__version__"]
