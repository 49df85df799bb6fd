"""edge-convert: ONNX -> quantized TFLite -> validated, signed bundle (runs on a build host)."""
