"""A stand-in for onnx2tf that crashes on demand (tests only; put its parent first on PYTHONPATH).

When ``EDGE_TEST_ONNX2TF_CRASH_ON`` names an argument that the converter passes (``-oiqt`` for
integer quantization), the process kills itself with SIGSEGV, as onnx2tf did on a real CRNN;
otherwise the real onnx2tf runs unchanged.
"""
