"""A gRPC load generator for KServe v2 ``ModelInfer``: N clients, one request in flight each.

The gRPC counterpart of loadgen.py, in its own process: every client has its own channel
(its own HTTP/2 connection, like the HTTP load generator's keep-alive connections) and sends
the same pre-serialised ``ModelInferRequest`` again as soon as the answer arrives. Requests
and answers stay bytes (no protobuf work in the client), so the client costs only what
grpc.aio itself costs. Usage: ``python grpc_loadgen.py JOB_JSON`` with the same job and
output fields as loadgen.py (``port`` is the gRPC port; ``request`` a file of message bytes).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import grpc

METHOD = "/inference.GRPCInferenceService/ModelInfer"


async def client(target: str, request: bytes, window: tuple[float, float], stop: list[bool], out: dict[str, Any]) -> None:
    """One channel sending requests back to back until ``stop[0]``."""
    # A local subchannel pool: channels to the same target would otherwise share one connection.
    async with grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        call = channel.unary_unary(METHOD)
        await channel.channel_ready()
        start, end = window
        while not stop[0]:
            t0 = time.perf_counter()
            try:
                await call(request)
                ok = True
            except grpc.RpcError:
                ok = False
            now = time.perf_counter()
            out["total"] += 1
            if not ok:
                out["errors"] += 1
            if start <= now <= end:
                out["latencies"].append(now - t0)
            if now > end:
                stop[0] = True


async def main(job: dict[str, Any]) -> dict[str, Any]:
    request = Path(job["request"]).read_bytes()
    target = f"{job['host']}:{job['port']}"
    t = time.perf_counter()
    window = (t + job["warmup"], t + job["warmup"] + job["duration"])
    stop = [False]
    out: dict[str, Any] = {"total": 0, "errors": 0, "latencies": []}
    tasks = [asyncio.create_task(client(target, request, window, stop, out)) for _ in range(job["clients"])]
    await asyncio.sleep(max(0.0, window[1] - time.perf_counter()))
    stop[0] = True
    await asyncio.wait(tasks, timeout=30)
    return {
        "count": len(out["latencies"]),
        "total": out["total"],
        "errors": out["errors"],
        "seconds": job["duration"],
        "latencies_us": [round(x * 1e6, 1) for x in out["latencies"]],
    }


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    try:
        import uvloop

        result = uvloop.run(main(spec))
    except ImportError:
        result = asyncio.run(main(spec))
    Path(spec["out"]).write_text(json.dumps(result), encoding="utf-8")
