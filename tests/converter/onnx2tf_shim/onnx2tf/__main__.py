import os
import runpy
import signal
import sys

if os.environ.get("EDGE_TEST_ONNX2TF_CRASH_ON", "") in sys.argv[1:]:
    sys.stdout.write("INFO: quantization start (shim)\n")
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGSEGV)

shim = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != shim]
for name in [m for m in sys.modules if m == "onnx2tf" or m.startswith("onnx2tf.")]:
    del sys.modules[name]
runpy.run_module("onnx2tf", run_name="__main__", alter_sys=True)
