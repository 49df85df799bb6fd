"""edge-runtime: an inference runtime for Raspberry Pi and embedded Linux devices.

Signed model bundles, a versioned local store with fallback, LiteRT and onnxruntime
backends, a KServe v2 HTTP API and signed model updates over MQTT.
"""

__version__ = "0.1.0"
RUNTIME_MAJOR = 0

__all__ = ["__version__", "RUNTIME_MAJOR"]
