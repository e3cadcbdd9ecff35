"""qpack: data-free n-bit weight quantization into the .qpk container."""

__version__ = "0.1.0"
