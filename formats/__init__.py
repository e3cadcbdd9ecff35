"""File formats: ONNX and TFLite adapters and the .qpk container."""
