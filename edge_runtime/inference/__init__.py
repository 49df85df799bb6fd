"""Inference backends (LiteRT, onnxruntime), tensor specs and the golden self-test.

Knows nothing of HTTP or MQTT. ``tensors`` is pure and imported by the manifest model;
import ``backend``, ``litert``, ``onnx`` and ``selftest`` by their module names.
"""
