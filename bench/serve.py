"""Benchmark of ``edge-runtime serve`` against the floors and the usual Python model server.

One run measures, side by side, for the demo MLP (30 features) and a 3x96x96 CNN:

(a) the bare LiteRT invoke in-process (set_tensor + invoke + get_tensor, batch 1): the floor;
(b) our daemon, JSON and binary tensors, metrics and routing on, several serving configs, and
    the same daemon's KServe v2 gRPC endpoint (raw tensors, bench/servers/h2_loadgen.py, a raw HTTP/2 client as cheap as the HTTP one);
(c) a FastAPI + uvicorn + onnxruntime server written the usual way (bench/servers/fastapi_usual.py);
(d) a bare ASGI app on uvicorn that only decodes, invokes LiteRT and encodes (bench/servers/asgi_floor.py);
(e) Triton from the nvidia-pytriton wheel: optional, measured only when ``tritonserver`` is installed;
(f) a raw asyncio protocol on uvloop + httptools that only decodes, invokes LiteRT and encodes, with no
    ASGI (bench/servers/raw_floor.py): the floor under any Python asyncio HTTP server.

at 1 and 16 concurrent keep-alive clients driven by a separate cheap load generator
(bench/servers/loadgen.py: uvloop, raw sockets), plus the daemon's RSS with the demo model,
its start-to-ready time and batching on versus off. Prints medians over interleaved rounds,
ratios and the issue's targets, and writes the table to bench/results/serve.md.

Usage: ``python bench/serve.py [--quick] [--rounds N] [--duration S] [--rss-only]``. ``--quick`` (one
short round) finishes in under two minutes once the CNN is cached; the CNN is built with
onnx.helper and converted once with onnx2tf into ``$XDG_CACHE_HOME/edge-runtime-bench``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import logging
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "servers"))
from bench_models import FACTORY, SERVING, cnn_models, make_device, write_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SERVERS = Path(__file__).resolve().parent / "servers"
PY = sys.executable
EDGE = Path(PY).parent / "edge-runtime"
RESULTS = REPO / "bench" / "results" / "serve.md"


def bare_invoke_us(tflite: Path, shape: tuple[int, ...], runs: int) -> float:
    """(a) median set_tensor + invoke + get_tensor, batch 1, one thread, in this process."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(tflite), num_threads=1)
    interp.allocate_tensors()
    i, o = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    times = []
    for k in range(runs + 50):
        t0 = time.perf_counter()
        interp.set_tensor(i, x)
        interp.invoke()
        interp.get_tensor(o)
        if k >= 50:
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def bare_invoke_cpu_us(tflite: Path, shape: tuple[int, ...], runs: int) -> float:
    """(a) the same call sequence as CPU per call, as the daemon's figure is counted: thread CPU
    over all calls (a mean, not a median) and a different input buffer each call (a ring of 8
    larger together than L2), as each request brings its own body."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(tflite), num_threads=1)
    interp.allocate_tensors()
    i, o = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(shape).astype(np.float32) for _ in range(8)]
    for k in range(50):
        interp.set_tensor(i, xs[k % 8])
        interp.invoke()
        interp.get_tensor(o)
    c0 = time.thread_time_ns()
    for k in range(runs):
        interp.set_tensor(i, xs[k % 8])
        interp.invoke()
        interp.get_tensor(o)
    return (time.thread_time_ns() - c0) / runs / 1000


def monitoring_cost_us(calls: int = 200_000) -> dict[str, float]:
    """Per-request cost of the field monitoring's request-path hook, in this process: the demo
    MLP's one-row request through ``VersionMonitor.observe`` (drift sketches, and drift with
    capture at 1 %, records written as the daemon writes them), CPU time of every thread,
    pacing the calls at about 15,000 a second as a loaded daemon would see them."""
    import resource

    from edge_runtime.bundle.profile import build_profile
    from edge_runtime.config import CaptureConfig, DriftConfig
    from edge_runtime.monitoring.hub import Monitoring
    from edge_runtime.spec.tensors import TensorSpec

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    x_spec, y_spec = TensorSpec("input_0", "FP32", (-1, 30)), TensorSpec("output_0", "FP32", (-1, 1))
    calib = np.load(FACTORY / "calibration.npy").astype(np.float32)
    profile = build_profile([x_spec], [y_spec], [([calib], [calib[:, :1]])]).to_bytes()
    x = calib[:1]
    y = x[:, :1].copy()
    out = {}
    logging.getLogger("edge_runtime.monitoring").setLevel(logging.ERROR)  # the same row drifts: said once per run
    with tempfile.TemporaryDirectory(prefix="edge-bench-mon-") as d:
        for label, capture in (("none", None), ("drift", CaptureConfig()), ("drift + capture 1 %", CaptureConfig(rate=0.01))):
            hub = Monitoring(Path(d) / label.replace(" ", "_"), min_free_bytes=0)
            mon = hub.attach("m", 1, ["input_0"], ["output_0"], profile if capture else None, DriftConfig(),
                             capture or CaptureConfig(), [x_spec], [y_spec])
            c0 = cpu()
            t0 = time.perf_counter()
            for i in range(calls):
                mon.observe([x], [y])
                if i % 64 == 63:  # ~15,000 requests a second
                    lag = (i + 1) / 15_000 - (time.perf_counter() - t0)
                    if lag > 0:
                        time.sleep(lag)
            hub.writer.flush()
            out[label] = (cpu() - c0) / calls * 1e6
            hub.stop()
    return {k: v - out["none"] for k, v in out.items() if k != "none"}


def bare_rss_mb(tflite: Path, python: str = PY) -> float:
    """RSS of python + numpy + LiteRT with the model loaded and run once (a fresh process).

    Read from /proc (VmRSS): ``ru_maxrss`` survives exec and would report the parent's size.
    """
    code = (
        "import numpy as np\n"
        "from ai_edge_litert.interpreter import Interpreter\n"
        f"it = Interpreter(model_path={str(tflite)!r}, num_threads=1); it.allocate_tensors(); it.invoke()\n"
        "print(int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) / 1024)\n"
    )
    return float(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.split()[-1])


# -- processes and HTTP ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(port: int, path: str) -> int:
    """GET over a fresh connection; 0 when nothing answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            data = s.recv(64)
        return int(data[9:12]) if data.startswith(b"HTTP/1.1 ") else 0
    except OSError:
        return 0


@dataclass
class Server:
    """A server process under test."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    started: float

    def wait_ready(self, timeout: float = 120.0, poll_s: float = 0.002) -> float:
        """Seconds from process start until ``/v2/health/ready`` answered 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            if http_status(self.port, "/v2/health/ready") == 200:
                return time.monotonic() - self.started
            time.sleep(poll_s)
        raise RuntimeError(f"{self.name} not ready after {timeout} s")

    def cpu_s(self) -> float:
        """User + system CPU seconds the process has used."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> tuple[float, float]:
        """(current RSS, peak RSS) in MB from /proc."""
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def start(name: str, cmd: list[str], port: int, extra_env: dict[str, str] | None = None) -> Server:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env.update(extra_env or {})
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return Server(name, proc, port, time.monotonic())


# -- requests and load ----------------------------------------------------------------------


# -- start to ready and RSS, as systemd runs the daemon ---------------------------------------


def unit_env() -> dict[str, str]:
    """``Environment=`` of systemd/edge-runtime.service: the RSS figures are of the daemon as the unit runs it."""
    env: dict[str, str] = {}
    for line in (REPO / "systemd" / "edge-runtime.service").read_text().splitlines():
        if line.startswith("Environment="):
            env.update(kv.partition("=")[::2] for kv in line.split("=", 1)[1].split())
    return env


def measure_startup(tmp: Path, venvs: list[tuple[str, Path]], runs: int, mqtt_port: int | None,
                    tls: tuple[int, Path] | None = None
                    ) -> tuple[dict[str, tuple[list[float], tuple[float, float]]], int]:
    """Start to ready (``runs`` starts) and RSS after ready, a second of requests and a scrape, with
    only the demo model, per venv; with ``[mqtt]`` too (device venv) when ``mqtt_port`` has a broker,
    and over TLS with a client certificate when ``tls`` (port, certificates) has one.

    As on the device: the unit's environment, modules byte-compiled (pip compiles at install; the
    unit forbids writing bytecode), and this checkout's code in every venv."""
    (tmp / "demo").mkdir()
    demo_store, demo_root = make_device(tmp / "demo", None, demo_only=True)
    x = np.load(FACTORY / "sample.npy")[:1].astype(np.float32)
    req = tmp / "demo-fraud.http"
    req.write_bytes(request_bytes("fraud", "input_0", x, False))
    env = {**unit_env(), "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))}
    startup: dict[str, tuple[list[float], tuple[float, float]]] = {}
    errors = 0
    plan = [(label, edge, "") for label, edge in venvs]
    if mqtt_port is not None and venvs:
        label, edge = venvs[-1]
        plan.append((f"{label}, with [mqtt]", edge,
                     f'[device]\nid = "bench"\n[mqtt]\nurl = "mqtt://127.0.0.1:{mqtt_port}"\n'))
    if tls is not None and venvs:
        label, edge = venvs[-1]
        tls_port, certs = tls
        plan.append((f"{label}, with [mqtt] over TLS", edge,
                     f'[device]\nid = "bench"\n[mqtt]\nurl = "mqtts://127.0.0.1:{tls_port}"\n'
                     f'ca_file = "{certs / "ca.crt"}"\ncert_file = "{certs / "bench.crt"}"\n'
                     f'key_file = "{certs / "bench.key"}"\n'))
    for label, edge, extra in plan:
        subprocess.run([str(edge.parent / "python"), "-m", "compileall", "-q", str(REPO / "edge_runtime")],
                       check=True, stdout=subprocess.DEVNULL)
        ready_s: list[float] = []
        rss = (float("nan"), float("nan"))
        for i in range(runs):
            port = free_port()
            demo_cfg = write_config(tmp / f"demo-{i}.toml", demo_store, demo_root, port, extra)
            s = start("demo", [str(edge), "serve", "--config", str(demo_cfg)], port, env)
            try:
                ready_s.append(s.wait_ready())
                if i == 0:
                    res = load(port, req, 4, 0.2, 1.0)
                    errors += res["errors"]
                    http_status(port, "/metrics")
                    rss = s.rss_mb()
            finally:
                s.stop()
        startup[label] = (ready_s, rss)
        print(f"  {label}: RSS {rss[0]:.1f} MB, start to ready {statistics.median(ready_s):.3f} s", flush=True)
    return startup, errors


def _broker(exe: str, conf: Path, port: int) -> subprocess.Popen[bytes] | None:
    """Run mosquitto with ``conf``; the process once ``port`` accepts connections, None if it never does."""
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    return None


def mosquitto(port: int) -> subprocess.Popen[bytes] | None:
    """A loopback broker for the ``[mqtt]`` RSS figure, when mosquitto is installed."""
    exe = shutil.which("mosquitto")
    if exe is None:
        return None
    conf = Path(tempfile.mkdtemp(prefix="edge-bench-mqtt-")) / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n", encoding="utf-8")
    return _broker(exe, conf, port)


def tls_mosquitto(port: int, base: Path) -> subprocess.Popen[bytes] | None:
    """mosquitto with the shipped TLS and ACL config (device/mosquitto/), certificates from its
    gen-certs.sh (a client certificate for device "bench"), for the ``[mqtt]`` over TLS figure."""
    exe = shutil.which("mosquitto")
    if exe is None or shutil.which("openssl") is None:
        return None
    shipped = REPO / "device" / "mosquitto"
    certs = base / "certs"
    subprocess.run(["bash", str(shipped / "gen-certs.sh"), str(certs), "bench"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (base / "broker").mkdir()
    conf = base / "mosquitto-tls.conf"
    # Started as root, mosquitto switches to user "mosquitto", which cannot read these files.
    conf.write_text(f"user {getpass.getuser()}\n" + (shipped / "edge-runtime.conf").read_text()
                    .replace("/etc/mosquitto/edge-runtime/acl", str(shipped / "acl"))
                    .replace("/etc/mosquitto/edge-runtime/", f"{certs}/")
                    .replace("/var/lib/mosquitto/", f"{base / 'broker'}/")
                    .replace("listener 8883", f"listener {port} 127.0.0.1"), encoding="utf-8")
    return _broker(exe, conf, port)


def startup_checks(startup: dict[str, tuple[list[float], tuple[float, float]]], bare: dict[str, float]
                   ) -> list[tuple[str, float, str, bool]]:
    """The RSS (<= 64 MB, <= 20 MB above the bare interpreter) and start-to-ready (<= 0.5 s) rows."""
    checks = []
    for label, (ready_s, rss) in startup.items():
        b = bare["device venv" if label.startswith("device venv") else "test venv"]
        checks.append((f"daemon RSS with the demo model, {label} (MB)", rss[0],
                       f"<= 64 (peak {rss[1]:.1f}; bare interpreter {b:.1f})", rss[0] <= 64))
        checks.append((f"daemon RSS above the bare interpreter, {label} (MB)", rss[0] - b, "<= 20", rss[0] - b <= 20))
        ready = statistics.median(ready_s) if ready_s else float("nan")
        checks.append((f"start to ready, {label} (s, median of {len(ready_s)})", ready, "<= 0.5", ready <= 0.5))
    return checks


def request_bytes(model: str, input_name: str, x: np.ndarray, binary: bool) -> bytes:
    """A complete HTTP/1.1 infer request (keep-alive) for one input tensor."""
    if binary:
        head = json.dumps({"inputs": [{"name": input_name, "datatype": "FP32", "shape": list(x.shape),
                                       "parameters": {"binary_data_size": x.nbytes}}]}).encode()
        body = head + x.tobytes()
        extra = f"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {len(head)}\r\n"
    else:
        body = json.dumps({"inputs": [{"name": input_name, "datatype": "FP32", "shape": list(x.shape),
                                       "data": x.ravel().tolist()}]}).encode()
        extra = "Content-Type: application/json\r\n"
    return (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def grpc_request_bytes(model: str, input_name: str, x: np.ndarray) -> bytes:
    """A serialised KServe v2 ``ModelInferRequest`` with the tensor in raw_input_contents."""
    from edge_runtime.serving.grpc_proto import grpc_predict_v2_pb2 as pb

    tensor = pb.ModelInferRequest.InferInputTensor(name=input_name, datatype="FP32", shape=x.shape)
    return bytes(pb.ModelInferRequest(model_name=model, inputs=[tensor], raw_input_contents=[x.tobytes()]).SerializeToString())


def load(port: int, request_file: Path, clients: int, warmup: float, duration: float,
         generator: str = "loadgen.py") -> dict[str, Any]:
    out = request_file.with_suffix(".result.json")
    job = {"host": "127.0.0.1", "port": port, "request": str(request_file), "clients": clients,
           "warmup": warmup, "duration": duration, "out": str(out)}
    subprocess.run([PY, str(SERVERS / generator), json.dumps(job)], timeout=warmup + duration + 120, check=True)
    result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    lat = sorted(result["latencies_us"])
    n = len(lat)
    result["rps"] = n / duration
    result["p50_ms"] = lat[n // 2] / 1000 if n else float("nan")
    result["p99_ms"] = lat[min(n - 1, int(n * 0.99))] / 1000 if n else float("nan")
    del result["latencies_us"]
    return result


@dataclass(frozen=True)
class Case:
    """One measured combination."""

    model: str  # "mlp" or "cnn"
    server: str  # ours, fastapi, floor
    route: str  # model name on that server
    encoding: str  # json, binary (HTTP) or grpc (KServe v2 gRPC, raw tensors)
    clients: int
    note: str = field(default="", compare=False)

    @property
    def label(self) -> str:
        return f"{self.model}/{self.server}:{self.route}/{self.encoding}/{self.clients}"


def cases(with_cnn: bool, have_fastapi: bool, have_grpc: bool) -> list[Case]:
    out = []
    for c in (1, 16):
        out += [Case("mlp", "ours", "fraud", "json", c, "auto: inline"), Case("mlp", "ours", "fraud", "binary", c, "auto: inline"),
                Case("mlp", "floor", "fraud", "json", c), Case("mlp", "floor", "fraud", "binary", c),
                Case("mlp", "raw", "fraud", "binary", c)]
        if have_grpc:
            out.append(Case("mlp", "ours", "fraud", "grpc", c, "auto: inline; gRPC"))
        if have_fastapi:
            out.append(Case("mlp", "fastapi", "fraud", "json", c))
    out += [Case("mlp", "ours", "fraud_drift", "json", 16, "auto: inline; drift sketches on"),
            Case("mlp", "ours", "fraud_monitored", "json", 16, "auto: inline; drift + capture at 1 %"),
            Case("mlp", "ours", "fraud_threads", "json", 16, "threads, batching on (8, 500 µs)"),
            Case("mlp", "ours", "fraud_nobatch", "json", 16, "batching off (max_batch_size 0)")]
    if with_cnn:
        for c in (1, 16):
            out += [Case("cnn", "ours", "cnn", "binary", c, "2 interpreters, batching on (8, 1 ms)"),
                    Case("cnn", "ours", "cnn", "json", c, "2 interpreters, batching on"),
                    *([Case("cnn", "ours", "cnn", "grpc", c, "2 interpreters, batching on; gRPC")] if have_grpc else []),
                    Case("cnn", "floor", "cnn", "binary", c), Case("cnn", "floor", "cnn", "json", c),
                    Case("cnn", "raw", "cnn", "binary", c)]
            if have_fastapi:
                out.append(Case("cnn", "fastapi", "cnn", "json", c))
        out += [Case("cnn", "ours", "cnn_nobatch", "binary", 16, "2 interpreters, batching off"),
                Case("cnn", "ours", "cnn_single", "binary", 16, "1 interpreter, batching off")]
    return out


# -- report -----------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import version

    pkgs = []
    for p in ("ai-edge-litert", "numpy", "uvicorn", "uvloop", "httptools", "orjson", "onnxruntime", "fastapi",
              "grpcio", "protobuf"):
        try:
            pkgs.append(f"{p} {version(p)}")
        except Exception:
            pass
    return (f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}; "
            + ", ".join(pkgs))


def _versions(venv: Path) -> str:
    code = ("from importlib.metadata import version as v; "
            "print(', '.join(f'{p} {v(p)}' for p in ('numpy', 'ai-edge-litert', 'cryptography', 'uvicorn')))")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=False)
    return out.stdout.strip() or "versions unknown"


def fmt(v: float, digits: int = 2) -> str:
    return "–" if v != v else f"{v:,.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one short round (under two minutes)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, quick 1)")
    ap.add_argument("--duration", type=float, default=None, help="measured seconds per case (default 3, quick 1)")
    ap.add_argument("--no-cnn", action="store_true", help="skip the CNN (no onnx2tf conversion)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="markdown output")
    ap.add_argument("--only", default="", help="comma-separated parts of case labels to run (e.g. 'mlp/ours:fraud/')")
    ap.add_argument("--device-venv", type=Path, default=None,
                    help="a venv with only the device extra (default: $EDGE_BENCH_DEVICE_VENV or .venv-device) "
                         "for the RSS and start-up figures; the test venv pins numpy 1.26 for onnx2tf")
    ap.add_argument("--rss-only", action="store_true",
                    help="only the RSS and start-to-ready rows (a minute), written to bench/results/serve-rss.md")
    args = ap.parse_args(argv)
    if args.rss_only:
        return rss_only(args)
    rounds = args.rounds or (1 if args.quick else 3)
    duration = args.duration or (1.0 if args.quick else 3.0)
    warmup = 0.3 if args.quick else 0.5
    t_start = time.monotonic()
    load_before = os.getloadavg()
    info = machine()
    print(f"bench/serve.py on {info}", flush=True)

    onnx_cnn = tflite_cnn = None
    if not args.no_cnn:
        onnx_cnn, tflite_cnn = cnn_models()
    floor = {"mlp": bare_invoke_us(FACTORY / "fraud.tflite", (1, 30), 20000)}
    if tflite_cnn is not None:
        floor["cnn"] = bare_invoke_us(tflite_cnn, (1, 3, 96, 96), 300 if args.quick else 1000)
        floor["cnn_cpu"] = bare_invoke_cpu_us(tflite_cnn, (1, 3, 96, 96), 300 if args.quick else 1000)
    # The bare invoke is measured again before each round; the report divides by the lowest figure
    # seen, so that a busy moment during one measurement cannot flatter the daemon's ratios.
    bare_seen: dict[str, list[float]] = {k: [v] for k, v in floor.items() if k.startswith("cnn")}
    device_venv = args.device_venv or Path(os.environ.get("EDGE_BENCH_DEVICE_VENV", REPO / ".venv-device"))
    if not (device_venv / "bin" / "edge-runtime").is_file():
        device_venv = None
    bare_rss = bare_rss_mb(FACTORY / "fraud.tflite")
    bare_rss_device = bare_rss_mb(FACTORY / "fraud.tflite", str(device_venv / "bin" / "python")) if device_venv else None
    print(f"(a) bare LiteRT invoke, batch 1: MLP {floor['mlp']:.2f} µs" +
          (f", CNN {floor['cnn']:.0f} µs (CPU per call {floor['cnn_cpu']:.0f} µs)" if "cnn" in floor else "")
          + f"; bare interpreter RSS {bare_rss:.1f} MB"
          + (f" ({bare_rss_device:.1f} MB in {device_venv})" if device_venv else ""), flush=True)
    monitoring_cost = monitoring_cost_us(50_000 if args.quick else 200_000)
    print("monitoring hook, CPU µs per request: " + ", ".join(f"{k} {v:.2f}" for k, v in monitoring_cost.items()),
          flush=True)
    have_fastapi = True
    try:
        import fastapi  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        have_fastapi = False
    have_grpc = True
    try:
        from edge_runtime.serving import grpc_server  # noqa: F401
    except ImportError:
        have_grpc = False

    results: dict[Case, list[dict[str, Any]]] = {}
    errors = 0
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmpdir:
        tmp = Path(tmpdir)
        store, root = make_device(tmp, tflite_cnn)
        rng = np.random.default_rng(2)
        x_mlp = np.load(FACTORY / "sample.npy")[:1].astype(np.float32)
        x_cnn = rng.random((1, 3, 96, 96), dtype=np.float32)
        req_files: dict[tuple[str, str], Path] = {}
        for route in ("fraud", "fraud_drift", "fraud_monitored", "fraud_threads", "fraud_nobatch", "cnn", "cnn_nobatch",
                      "cnn_single"):
            x, inp = (x_mlp, "input_0") if route.startswith("fraud") else (x_cnn, "image")
            for enc in ("json", "binary"):
                f = tmp / f"{route}-{enc}.http"
                f.write_bytes(request_bytes(route, inp, x, enc == "binary"))
                req_files[(route, enc)] = f
            if have_grpc:
                f = tmp / f"{route}-grpc.bin"
                f.write_bytes(grpc_request_bytes(route, inp, x))
                req_files[(route, "grpc")] = f

        ports = {"ours": free_port(), "fastapi": free_port(), "floor": free_port(), "raw": free_port()}
        cfg = write_config(tmp / "all.toml", store, root, ports["ours"], SERVING)
        if have_grpc:  # the same daemon also answers KServe v2 gRPC
            ports["grpc"] = free_port()
            cfg.write_text(cfg.read_text().replace("[server]\n", f"[server]\ngrpc_port = {ports['grpc']}\n", 1))
        servers = {"ours": start("ours", [str(EDGE), "serve", "--config", str(cfg)], ports["ours"])}
        cnn_arg = [f"cnn={tflite_cnn}"] if tflite_cnn else []
        servers["floor"] = start("floor", [PY, str(SERVERS / "asgi_floor.py"), str(ports["floor"]),
                                           f"fraud={FACTORY / 'fraud.tflite'}", *cnn_arg], ports["floor"])
        servers["raw"] = start("raw", [PY, str(SERVERS / "raw_floor.py"), str(ports["raw"]),
                                       f"fraud={FACTORY / 'fraud.tflite'}", *cnn_arg], ports["raw"])
        if have_fastapi:
            ort_cnn = [f"cnn={onnx_cnn}"] if onnx_cnn else []
            servers["fastapi"] = start("fastapi", [PY, str(SERVERS / "fastapi_usual.py"), str(ports["fastapi"]),
                                                   f"fraud={FACTORY / 'fraud.onnx'}", *ort_cnn], ports["fastapi"])
        try:
            for s in servers.values():
                s.wait_ready()
            todo = cases(tflite_cnn is not None, have_fastapi, have_grpc)
            if args.only:
                todo = [c for c in todo if any(part in c.label for part in args.only.split(","))]
            for r in range(rounds):
                if tflite_cnn is not None:  # again before each round: the ratios divide by the lowest
                    bare_seen["cnn"].append(bare_invoke_us(tflite_cnn, (1, 3, 96, 96), 300 if args.quick else 1000))
                    bare_seen["cnn_cpu"].append(bare_invoke_cpu_us(tflite_cnn, (1, 3, 96, 96),
                                                                   300 if args.quick else 1000))
                for case in todo:
                    cpu0 = servers[case.server].cpu_s()
                    if case.encoding == "grpc":
                        res = load(ports["grpc"], req_files[(case.route, "grpc")], case.clients, warmup, duration,
                                   "h2_loadgen.py")
                    else:
                        res = load(ports[case.server], req_files[(case.route, case.encoding)], case.clients, warmup,
                                   duration)
                    # CPU per request of the server process (warm-up included on both sides of the ratio)
                    res["cpu_us"] = (servers[case.server].cpu_s() - cpu0) / max(1, res["total"]) * 1e6
                    errors += res["errors"]
                    results.setdefault(case, []).append(res)
                    print(f"  round {r + 1}/{rounds} {case.label:<42} {res['rps']:>9,.0f} req/s  p50 {res['p50_ms']:.3f} ms"
                          f"  cpu {res['cpu_us']:.0f} µs/req{'  ERRORS ' + str(res['errors']) if res['errors'] else ''}",
                          flush=True)
        finally:
            codes = {name: s.stop() for name, s in servers.items()}
        if codes.get("ours") != 0:
            print(f"the daemon exited with {codes.get('ours')} after SIGTERM", flush=True)
            errors += 1

        # Start to ready and RSS with only the demo model, in this venv and in the device venv.
        venvs = [("test venv", EDGE)] + ([("device venv", device_venv / "bin" / "edge-runtime")] if device_venv else [])
        mqtt_port, tls_port = free_port(), free_port()
        broker = mosquitto(mqtt_port)
        tls_broker = tls_mosquitto(tls_port, tmp)
        try:
            startup, startup_errors = measure_startup(tmp, venvs, 3 if args.quick else 7,
                                                      mqtt_port if broker else None,
                                                      (tls_port, tmp / "certs") if tls_broker else None)
        finally:
            for proc in (broker, tls_broker):
                if proc:
                    proc.kill()
                    proc.wait()
        errors += startup_errors

    def med(case: Case, key: str) -> float:
        vals = [r[key] for r in results.get(case, [])]
        return statistics.median(vals) if vals else float("nan")

    for key, seen in bare_seen.items():
        floor[key] = min(seen)
    lines = [
        "# Serving benchmark (bench/serve.py)",
        "",
        f"Run {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} on {info}.",
        f"{rounds} interleaved round(s) of {duration:g} s per case after {warmup:g} s warm-up; medians. "
        "Keep-alive clients, one request in flight each, from a separate uvloop process.",
        "",
        f"(a) bare LiteRT invoke, batch 1, 1 thread: MLP {floor['mlp']:.2f} µs"
        + (f", CNN {floor['cnn']:.0f} µs (median of the calls; as CPU per call, each with its own input "
           f"buffer: {floor['cnn_cpu']:.0f} µs; the lowest of {len(bare_seen['cnn'])} measurements, before the run "
           f"and each round: {', '.join(f'{v:.0f}' for v in bare_seen['cnn'])} and "
           f"{', '.join(f'{v:.0f}' for v in bare_seen['cnn_cpu'])} µs)" if "cnn" in floor else "") + ".",
        "(e) Triton: not measured (the optional nvidia-pytriton wheel is not installed here).",
        "Throughput cases run the daemon from the test venv (numpy 1.26.4, ai-edge-litert 2.1.0, pinned by onnx2tf); "
        + (f"RSS and start-up are also measured in a device-only venv ({_versions(device_venv)})."
           if device_venv else "no device-only venv was found for the RSS and start-up figures (see --device-venv).")
        + " The RSS and start-up rows run the daemon as systemd/edge-runtime.service does (its Environment=, "
          "byte-compiled modules), with [mqtt] too when mosquitto is installed.",
        "",
        "| model | server | route / config | body | clients | req/s | p50 ms | p99 ms | server CPU µs/req |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    names = {"ours": "(b) edge-runtime", "floor": "(d) bare ASGI floor", "fastapi": "(c) FastAPI usual",
             "raw": "(f) raw asyncio floor"}
    for case in sorted(results, key=lambda c: (c.model, c.clients, c.encoding, c.server, c.route)):
        lines.append(f"| {case.model} | {names[case.server]} | {case.route}{' (' + case.note + ')' if case.note else ''} | "
                     f"{case.encoding} | {case.clients} | {fmt(med(case, 'rps'), 0)} | {fmt(med(case, 'p50_ms'), 3)} | "
                     f"{fmt(med(case, 'p99_ms'), 3)} | {fmt(med(case, 'cpu_us'), 0)} |")

    def rps(model: str, server: str, route: str, enc: str, clients: int) -> float:
        return med(Case(model, server, route, enc, clients), "rps")

    def p50(model: str, server: str, route: str, enc: str, clients: int) -> float:
        return med(Case(model, server, route, enc, clients), "p50_ms")

    checks: list[tuple[str, float, str, bool]] = []
    ours16 = rps("mlp", "ours", "fraud", "json", 16)
    floor16 = rps("mlp", "floor", "fraud", "json", 16)
    checks.append(("MLP JSON 16 clients: ours / bare ASGI floor", ours16 / floor16, ">= 0.8", ours16 / floor16 >= 0.8))
    if have_fastapi:
        fa = rps("mlp", "fastapi", "fraud", "json", 16)
        checks.append(("MLP JSON 16 clients: ours / FastAPI usual", ours16 / fa, ">= 2.5", ours16 / fa >= 2.5))
    p = p50("mlp", "ours", "fraud", "json", 1)
    checks.append(("MLP JSON 1 client p50 (ms)", p, "<= 0.2", p <= 0.2))
    if have_grpc:
        for model, route, want in (("mlp", "fraud", 0.6), ("cnn", "cnn", 0.9)):
            if model == "cnn" and "cnn" not in floor:
                continue
            for c in (1, 16):
                g, b = rps(model, "ours", route, "grpc", c), rps(model, "ours", route, "binary", c)
                target = c == 16
                checks.append((f"{model.upper()} {c} client(s): gRPC / HTTP binary req/s", g / b,
                               f">= {want}" if target else "(for reference)", g / b >= want if target else True))
                cg = med(Case(model, "ours", route, "grpc", c), "cpu_us")
                cb = med(Case(model, "ours", route, "binary", c), "cpu_us")
                checks.append((f"{model.upper()} {c} client(s): server CPU per request, gRPC / HTTP binary", cg / cb,
                               "(for reference)", True))
    for what, us in monitoring_cost.items():
        ours_cpu = med(Case("mlp", "ours", "fraud", "json", 16), "cpu_us")
        checks.append((f"monitoring hook in-process, {what}: CPU µs per request (share of the daemon's {ours_cpu:.0f} µs)",
                       us, f"<= 5 % ({us / ours_cpu * 100:.1f} %)", us <= 0.05 * ours_cpu))
    for route, what in (("fraud_drift", "drift sketches"), ("fraud_monitored", "drift + capture at 1 %")):
        rate = rps("mlp", "ours", route, "json", 16)
        checks.append((f"MLP JSON 16 clients: {what} on / off, req/s (daemon, side by side)", rate / ours16, ">= 0.95",
                       rate / ours16 >= 0.95))
        extra = med(Case("mlp", "ours", route, "json", 16), "cpu_us") - med(Case("mlp", "ours", "fraud", "json", 16), "cpu_us")
        checks.append((f"MLP JSON 16 clients: {what}, server CPU µs/request added", extra, "(for reference)", True))
    on, off = ours16, rps("mlp", "ours", "fraud_nobatch", "json", 16)
    checks.append(("MLP 16 clients: batching on / off", on / off, ">= ~1 (never slower)", on / off >= 0.95))
    if "cnn" in floor:
        p = p50("cnn", "ours", "cnn", "binary", 1)
        ratio = p / (floor["cnn"] / 1000)
        checks.append(("CNN binary 1 client: p50 / bare invoke", ratio, "<= 1.5", ratio <= 1.5))
        for c in (1, 16):
            cpu = med(Case("cnn", "ours", "cnn", "binary", c), "cpu_us") / floor["cnn"]
            checks.append((f"CNN binary {c} client(s): server CPU per request / bare invoke", cpu, "<= 1.25", cpu <= 1.25))
            per_call = med(Case("cnn", "ours", "cnn", "binary", c), "cpu_us") / floor["cnn_cpu"]
            checks.append((f"CNN binary {c} client(s): server CPU per request / bare invoke's CPU per call", per_call,
                           "(for reference)", True))
            if have_grpc:
                g = med(Case("cnn", "ours", "cnn", "grpc", c), "cpu_us") / floor["cnn"]
                checks.append((f"CNN gRPC {c} client(s): server CPU per request / bare invoke", g, "(for reference)", True))
            fl = med(Case("cnn", "floor", "cnn", "binary", c), "cpu_us") / floor["cnn"]
            checks.append((f"CNN binary {c} client(s): bare ASGI floor's CPU per request / bare invoke", fl,
                           "(for reference)", True))
            raw = med(Case("cnn", "raw", "cnn", "binary", c), "cpu_us")
            checks.append((f"CNN binary {c} client(s): raw asyncio floor's CPU per request / bare invoke",
                           raw / floor["cnn"], "(for reference)", True))
            checks.append((f"CNN binary {c} client(s): server CPU per request, edge-runtime / raw asyncio floor",
                           med(Case("cnn", "ours", "cnn", "binary", c), "cpu_us") / raw, "(for reference)", True))
        on = rps("cnn", "ours", "cnn", "binary", 16)
        off2 = rps("cnn", "ours", "cnn_nobatch", "binary", 16)
        off1 = rps("cnn", "ours", "cnn_single", "binary", 16)
        checks.append(("CNN binary 16 clients: batching on (2 interp.) / off (1 interp.)", on / off1, ">= 1.5", on / off1 >= 1.5))
        checks.append(("CNN binary 16 clients: batching on / off (both 2 interp.)", on / off2, "(for reference)", True))
    checks += startup_checks(startup, {"test venv": bare_rss, "device venv": bare_rss_device or float("nan")})
    lines += ["", "| target | measured | wanted | met |", "|---|---:|---|---|"]
    lines += [f"| {name} | {value:.3f} | {want} | {'yes' if ok else 'NO'} |" for name, value, want, ok in checks]
    load_after = os.getloadavg()
    lines += ["", f"Request errors during the run: {errors}. Whole run: {time.monotonic() - t_start:.0f} s. "
              f"Load average before/after: {load_before[0]:.2f}/{load_after[0]:.2f} (other work on the machine "
              "moves absolute figures; compare rows of one run).", ""]
    text = "\n".join(lines)
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    return 1 if errors else 0


def rss_only(args: argparse.Namespace) -> int:
    """``--rss-only``: the RSS and start-to-ready rows alone, in their own file (a partial run)."""
    t_start = time.monotonic()
    info = machine()
    device_venv = args.device_venv or Path(os.environ.get("EDGE_BENCH_DEVICE_VENV", REPO / ".venv-device"))
    venvs = [("test venv", EDGE)]
    bare = {"test venv": bare_rss_mb(FACTORY / "fraud.tflite")}
    if (device_venv / "bin" / "edge-runtime").is_file():
        venvs.append(("device venv", device_venv / "bin" / "edge-runtime"))
        bare["device venv"] = bare_rss_mb(FACTORY / "fraud.tflite", str(device_venv / "bin" / "python"))
    mqtt_port, tls_port = free_port(), free_port()
    broker = mosquitto(mqtt_port)
    tls_broker = None
    try:
        with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmpdir:
            tls_broker = tls_mosquitto(tls_port, Path(tmpdir))
            startup, errors = measure_startup(Path(tmpdir), venvs, 3 if args.quick else 7, mqtt_port if broker else None,
                                              (tls_port, Path(tmpdir) / "certs") if tls_broker else None)
    finally:
        for proc in (broker, tls_broker):
            if proc:
                proc.kill()
                proc.wait()
    out = args.out if args.out != RESULTS else RESULTS.with_name("serve-rss.md")
    lines = [
        "# Serving benchmark, RSS and start-up only (bench/serve.py --rss-only)",
        "",
        f"Partial run {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} on {info}.",
        "The daemon with the demo model, as systemd/edge-runtime.service runs it (its Environment=, byte-compiled "
        "modules); RSS after ready, a second of requests from 4 clients and one /metrics scrape; "
        + (f"device venv: {_versions(device_venv)}; " if len(venvs) > 1 else "no device venv found; ")
        + ("[mqtt] against a loopback mosquitto" + (", and over TLS with a client certificate (the shipped device/mosquitto config)." if tls_broker else ".") if broker else "no mosquitto: no [mqtt] figure."),
        "",
        "| target | measured | wanted | met |",
        "|---|---:|---|---|",
    ]
    lines += [f"| {n} | {v:.3f} | {w} | {'yes' if ok else 'NO'} |" for n, v, w, ok in startup_checks(startup, bare)]
    lines += ["", f"Request errors: {errors}. Whole run: {time.monotonic() - t_start:.0f} s.", ""]
    text = "\n".join(lines)
    print("\n" + text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
