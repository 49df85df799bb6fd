"""Fuzzing the KServe v2 HTTP API of a running daemon over real loopback HTTP.

Hypothesis draws infer requests, JSON and binary (Triton's binary tensor extension), valid
and broken: wrong names, shapes and datatypes, truncated binary data, bad
``Inference-Header-Content-Length``, random and non-UTF-8 bodies, deeply nested JSON,
bodies around and over ``[server] max_request_bytes``, wrong paths and methods, and
malformed HTTP written straight to a socket (huge headers, bad Content-Length, broken
chunked encoding). Properties:

* no answer is a 5xx other than the documented 503;
* a valid request answers exactly what the interpreter answers for the same rows;
* afterwards the daemon is alive, answers health and infer, and its log holds no traceback.

One daemon serves the whole module; every exchange is counted: at least 10,000 in the long
mode (``make test-long``), a few hundred in ``make test``.
"""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import urllib.parse
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reliability.conftest import Daemon, Figures, Releases, new_device, scale

pytestmark = pytest.mark.integration

EXAMPLES = scale(50, 1300)  # per hypothesis test below; 8 of them
MIN_CASES = scale(300, 10_000)
MAX_REQUEST_BYTES = 256 * 1024
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64",
             "BYTES", "BF16", "fp32", "FP32 ", "", "FLOAT"]
DOCUMENTED = {200, 400, 404, 405, 413, 503}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=16),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=40,
)


@dataclass
class Target:
    """The daemon under fuzz, a keep-alive connection to it and what it answered."""

    daemon: Daemon
    releases: Releases
    bundle: Path
    statuses: Counter[int] = field(default_factory=Counter)
    bad: list[str] = field(default_factory=list)
    raw_closed: int = 0
    conn: http.client.HTTPConnection | None = None

    @property
    def cases(self) -> int:
        """Exchanges so far (answers plus connections the server closed without one)."""
        return sum(self.statuses.values()) + self.raw_closed

    def record(self, status: int, what: str) -> None:
        """Count an answer; remember any 5xx other than 503."""
        self.statuses[status] += 1
        if status >= 500 and status != 503:
            self.bad.append(f"{status} for {what[:300]}")

    def send(self, method: str, path: str, body: bytes | list[bytes] | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """One request on the keep-alive connection (reopened when the server closed it).

        ``body`` may be a list of chunks, sent with chunked transfer encoding."""
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.daemon.port, timeout=60)
            try:
                self.conn.request(method, path, body=body, headers=headers or {}, encode_chunked=isinstance(body, list))
                resp = self.conn.getresponse()
                data = resp.read()
            except (http.client.HTTPException, ConnectionError):
                # A keep-alive connection the server had closed, or an answer (413) that came
                # while the body was still being written: open a new connection and send again.
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
                continue
            except BaseException:
                self.conn.close()
                self.conn = None
                raise
            out = {k.lower(): v for k, v in resp.getheaders()}
            if resp.will_close:
                self.conn.close()
                self.conn = None
            shown = body[:200] if isinstance(body, bytes) else f"{len(body or [])} chunks"
            self.record(resp.status, f"{method} {path} {headers} {shown!r}")
            return resp.status, out, data
        raise AssertionError("unreachable")

    def expect(self, x: np.ndarray) -> np.ndarray:
        """The interpreter's outputs for the batch ``x``."""
        return self.releases.outputs(self.bundle, x)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, keys: Any, releases: Releases) -> Iterator[Target]:
    """A daemon serving ``fraud`` v1 with ``max_request_bytes`` = 256 KiB."""
    dev = new_device(tmp_path_factory.mktemp("fuzz-http"), keys, releases)
    dev.write_config(server_toml=f"max_request_bytes = {MAX_REQUEST_BYTES}\n")
    daemon = dev.start()
    t = Target(daemon, releases, releases.bundle(1))
    yield t
    if t.conn is not None:
        t.conn.close()
    dev.close()


# -- requests --------------------------------------------------------------------------------


@st.composite
def rows(draw: st.DrawFn) -> np.ndarray:
    """A float32 batch [n, 30]: ordinary, zero, huge, tiny or mixed values."""
    n = draw(st.integers(1, 16))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["normal", "normal", "zeros", "huge", "tiny", "mixed"]))
    x = rng.standard_normal((n, 30))
    if kind == "zeros":
        x[:] = 0.0
    elif kind == "huge":
        x *= 1e30
    elif kind == "tiny":
        x *= 1e-40  # float32 subnormals
    elif kind == "mixed":
        x *= 10.0 ** rng.integers(-30, 30, size=x.shape)
    return x.astype(np.float32)


def json_request(x: np.ndarray, **extra: Any) -> dict[str, Any]:
    """A JSON infer request for ``fraud``."""
    return {"inputs": [{"name": "input_0", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}],
            **extra}


def binary_request(x: np.ndarray, binary_output: bool) -> tuple[bytes, int]:
    """(body, JSON header length) of a binary-extension infer request."""
    raw = np.ascontiguousarray(x, dtype="<f4").tobytes()
    head: dict[str, Any] = {"inputs": [{"name": "input_0", "datatype": "FP32", "shape": list(x.shape),
                                        "parameters": {"binary_data_size": len(raw)}}]}
    if binary_output:
        head["outputs"] = [{"name": "output_0", "parameters": {"binary_data": True}}]
    header = orjson.dumps(head)
    return header + raw, len(header)


def decode_output(headers: dict[str, str], body: bytes) -> tuple[dict[str, Any], np.ndarray]:
    """(JSON part, output_0) of an infer response, JSON or binary."""
    n = headers.get("inference-header-content-length")
    head = orjson.loads(body if n is None else body[: int(n)])
    out = head["outputs"][0]
    if "data" in out:
        arr = np.asarray(out["data"], dtype=np.float32)
    else:
        arr = np.frombuffer(body, dtype="<f4", count=out["parameters"]["binary_data_size"] // 4, offset=int(n or 0))
    return head, arr.reshape(out["shape"])


def check_error_body(status: int, body: bytes, headers: dict[str, str]) -> None:
    """Errors of the API are ``{"error": "..."}``; uvicorn's own 400 for unparsable HTTP is plain text."""
    if status == 200:
        return
    if headers.get("content-type", "").startswith("application/json"):
        doc = orjson.loads(body)
        assert isinstance(doc, dict) and isinstance(doc.get("error"), str) and doc["error"], body[:300]


# -- valid requests --------------------------------------------------------------------------


@SETTINGS
@given(x=rows(), request_id=st.none() | st.text(max_size=20), outputs=st.sampled_from(["none", "named", "binary", "all-binary"]))
def test_valid_json_requests_answer_what_the_interpreter_answers(
    target: Target, x: np.ndarray, request_id: str | None, outputs: str
) -> None:
    extra: dict[str, Any] = {}
    if request_id is not None:
        extra["id"] = request_id
    if outputs == "named":
        extra["outputs"] = [{"name": "output_0"}]
    elif outputs == "binary":
        extra["outputs"] = [{"name": "output_0", "parameters": {"binary_data": True}}]
    elif outputs == "all-binary":
        extra["parameters"] = {"binary_data_output": True}
    status, headers, body = target.send("POST", "/v2/models/fraud/infer", orjson.dumps(json_request(x, **extra)))
    assert status == 200, body[:300]
    head, out = decode_output(headers, body)
    assert head["model_name"] == "fraud" and head["model_version"] == "1" and head.get("id") == request_id
    np.testing.assert_allclose(out, target.expect(x), rtol=1e-6, atol=1e-7, equal_nan=True)


@SETTINGS
@given(x=rows(), binary_output=st.booleans(), version_path=st.booleans(), gzip_body=st.booleans())
def test_valid_binary_requests_answer_what_the_interpreter_answers(
    target: Target, x: np.ndarray, binary_output: bool, version_path: bool, gzip_body: bool
) -> None:
    body, n = binary_request(x, binary_output)
    headers = {"Inference-Header-Content-Length": str(n), "Content-Type": "application/octet-stream"}
    if gzip_body:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    path = "/v2/models/fraud/versions/1/infer" if version_path else "/v2/models/fraud/infer"
    status, rheaders, rbody = target.send("POST", path, body, headers)
    assert status == 200, rbody[:300]
    _, out = decode_output(rheaders, rbody)
    np.testing.assert_allclose(out, target.expect(x), rtol=1e-6, atol=1e-7, equal_nan=True)


# -- broken requests -------------------------------------------------------------------------


@st.composite
def broken_json(draw: st.DrawFn) -> Any:
    """A valid request with one to three things broken."""
    x = np.zeros((draw(st.integers(1, 3)), 30), dtype=np.float32)
    doc: Any = json_request(x)
    for _ in range(draw(st.integers(1, 3))):
        inputs = doc.get("inputs") if isinstance(doc, dict) else None
        tensor = inputs[0] if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict) else None
        how = draw(st.sampled_from(["top", "tensor", "name", "datatype", "shape", "data", "duplicate", "extra_input",
                                    "outputs", "parameters", "binary_size", "drop", "not_object"]))
        if how == "not_object":
            doc = draw(json_values)
        elif tensor is None or how == "top":
            doc = doc if isinstance(doc, dict) else {}
            doc[draw(st.sampled_from(["inputs", "outputs", "parameters", "id", "junk"]))] = draw(json_values)
        elif how == "tensor":
            tensor[draw(st.sampled_from(["name", "datatype", "shape", "data", "parameters", "junk"]))] = draw(json_values)
        elif how == "name":
            tensor["name"] = draw(st.sampled_from(["input_1", "INPUT_0", "", "output_0", "input_0 "]) | st.text(max_size=8))
        elif how == "datatype":
            tensor["datatype"] = draw(st.sampled_from(DATATYPES))
        elif how == "shape":
            tensor["shape"] = draw(st.lists(st.integers(-3, 2**40) | st.sampled_from([30, 1, 0, -1]), max_size=4))
        elif how == "data":
            tensor["data"] = draw(st.lists(json_values, max_size=40) | st.lists(st.booleans(), min_size=30, max_size=30)
                                  | st.just([[0.0] * 30]) | st.just(["1.0"] * 30) | st.just([2**64] * 30))
        elif how == "duplicate":
            doc["inputs"].append(dict(tensor))
        elif how == "extra_input":
            doc["inputs"].append({"name": draw(st.text(max_size=6)), "datatype": "FP32", "shape": [1], "data": [0.0]})
        elif how == "outputs":
            doc["outputs"] = [{"name": draw(st.sampled_from(["output_0", "output_1", ""]) | st.text(max_size=6)),
                               "parameters": draw(st.dictionaries(st.sampled_from(["binary_data", "classification"]),
                                                                  json_values, max_size=2))}]
        elif how == "parameters":
            doc["parameters"] = {"binary_data_output": draw(json_values)}
        elif how == "binary_size":
            params = tensor.setdefault("parameters", {})
            if isinstance(params, dict):
                params["binary_data_size"] = draw(json_values)
        else:  # drop
            tensor.pop(draw(st.sampled_from(["name", "datatype", "shape", "data"])), None)
    return doc


@SETTINGS
@given(doc=broken_json())
def test_broken_json_requests_answer_400(target: Target, doc: Any) -> None:
    body = json.dumps(doc).encode()  # the stdlib writes integers beyond 64 bits; orjson refuses them
    status, headers, rbody = target.send("POST", "/v2/models/fraud/infer", body)
    assert status in (200, 400), rbody[:300]
    check_error_body(status, rbody, headers)


@SETTINGS
@given(
    x=rows(),
    header=st.none() | st.integers(-(2**63), 2**65).map(str) | st.text(max_size=12)
    | st.sampled_from(["0", "1", "-1", " 12", "12 ", "0x10", "1e3", "+5", "٣"]),
    cut=st.none() | st.integers(0, 10_000),
    extra=st.binary(max_size=16),
    size=st.none() | json_values,
    flips=st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 255)), max_size=3),
)
def test_broken_binary_requests_answer_400(
    target: Target, x: np.ndarray, header: str | None, cut: int | None, extra: bytes, size: Any,
    flips: list[tuple[int, int]],
) -> None:
    body, n = binary_request(x, binary_output=False)
    if size is not None:
        head = json.loads(body[:n])
        head["inputs"][0]["parameters"]["binary_data_size"] = size
        raw = body[n:]
        h = json.dumps(head).encode()
        body, n = h + raw, len(h)
    buf = bytearray(body)
    for pos, val in flips:
        buf[pos % len(buf)] = val
    if cut is not None:
        buf = buf[: cut % (len(buf) + 1)]
    buf += extra
    value = str(n) if header is None else header
    headers = {"Inference-Header-Content-Length": value.encode("utf-8", "replace").decode("latin-1")}
    try:
        status, rheaders, rbody = target.send("POST", "/v2/models/fraud/infer", bytes(buf), headers)
    except ValueError:  # http.client refuses header values with CR/LF: nothing was sent
        return
    assert status in (200, 400), rbody[:300]
    check_error_body(status, rbody, rheaders)
    if status == 200:  # the mutations happened to leave a valid request (e.g. flips in the padding)
        decode_output(rheaders, rbody)


@st.composite
def odd_body(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """Random bytes, non-UTF-8, deeply nested JSON, compressed garbage; with random headers."""
    kind = draw(st.sampled_from(["bytes", "nonutf8", "nested", "nested_obj", "gzip", "deflate", "unknown_coding",
                                 "json_scalar", "huge_number", "nan"]))
    headers: dict[str, str] = {}
    if kind == "bytes":
        body = draw(st.binary(max_size=4096))
    elif kind == "nonutf8":
        body = b'{"inputs": [{"name": "input_0\xff\xfe", "datatype": "FP32", "shape": [1, 30], "data": []}]}'
    elif kind == "nested":
        depth = draw(st.integers(1, 100_000))
        body = b"[" * depth + b"]" * draw(st.integers(0, depth))
    elif kind == "nested_obj":
        depth = draw(st.integers(1, 20_000))
        body = b'{"inputs":' * depth + b"1" + b"}" * depth
    elif kind in ("gzip", "deflate"):
        payload = draw(st.binary(max_size=512))
        packed = gzip.compress(payload) if kind == "gzip" else zlib.compress(payload)
        cut = draw(st.integers(0, len(packed)))
        body = packed[:cut] if draw(st.booleans()) else packed
        headers["Content-Encoding"] = kind
    elif kind == "unknown_coding":
        body = b"{}"
        headers["Content-Encoding"] = draw(st.sampled_from(["br", "zstd", "gzip, br", "x-\xe9"]))
    elif kind == "json_scalar":
        body = draw(st.sampled_from([b"null", b"1", b'"x"', b"[]", b"{}", b"true", b'{"inputs": []}']))
    elif kind == "huge_number":
        body = b'{"inputs":[{"name":"input_0","datatype":"FP32","shape":[1,30],"data":[' + b",".join(
            [b"1e999"] * 30) + b"]}]}"
    else:
        body = b'{"inputs":[{"name":"input_0","datatype":"FP32","shape":[1,30],"data":[' + b",".join(
            [b"NaN"] * 30) + b"]}]}"
    if draw(st.booleans()):
        headers["Inference-Header-Content-Length"] = str(draw(st.integers(-5, len(body) + 5)))
    if draw(st.booleans()):
        headers["Content-Type"] = draw(st.sampled_from(["application/json", "text/plain", "application/octet-stream",
                                                        "multipart/form-data; boundary=x"]))
    return body, headers


@SETTINGS
@given(case=odd_body())
def test_random_and_malformed_bodies_answer_4xx(target: Target, case: tuple[bytes, dict[str, str]]) -> None:
    body, headers = case
    headers = {k: v.encode("utf-8", "replace").decode("latin-1") for k, v in headers.items()}
    status, rheaders, rbody = target.send("POST", "/v2/models/fraud/infer", body, headers)
    assert status in (400, 413), rbody[:300]
    check_error_body(status, rbody, rheaders)


@SETTINGS
@given(x=rows(), pad=st.integers(MAX_REQUEST_BYTES - 64, MAX_REQUEST_BYTES + 64) | st.integers(0, 4 * MAX_REQUEST_BYTES),
       declared=st.booleans())
def test_bodies_over_max_request_bytes_answer_413(target: Target, x: np.ndarray, pad: int, declared: bool) -> None:
    """White space after the JSON keeps it valid: at or under the limit it is served, over it 413."""
    core = orjson.dumps(json_request(x))
    body = core + b" " * max(0, pad - len(core))

    if declared:
        status, _, rbody = target.send("POST", "/v2/models/fraud/infer", body)
    else:  # chunked transfer encoding: no Content-Length up front
        status, _, rbody = target.send("POST", "/v2/models/fraud/infer",
                                       [body[i : i + 65536] for i in range(0, len(body), 65536)])
    if len(body) > MAX_REQUEST_BYTES:
        assert status == 413, rbody[:300]
    else:
        assert status == 200, rbody[:300]


# -- paths and methods -----------------------------------------------------------------------

SEGMENTS = ["v2", "models", "fraud", "versions", "1", "2", "0", "-1", "01", "99999999999999999999999", "infer", "ready",
            "stats", "config", "health", "live", "repository", "index", "metrics", "", "..", ".", "%ff", "%00", "%2F",
            "fraud%20", "FRAUD"]


@SETTINGS
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "FOO"]),
    segments=st.lists(st.sampled_from(SEGMENTS) | st.text(max_size=10).map(lambda s: urllib.parse.quote(s, safe="")),
                      max_size=7),
    prefix=st.sampled_from(["/v2/models/fraud/", "/v2/", "/"]),
    query=st.none() | st.text(max_size=20).map(lambda s: urllib.parse.quote(s, safe="=&")),
    body=st.none() | st.binary(max_size=64),
)
def test_wrong_paths_and_methods_answer_documented_statuses(
    target: Target, method: str, segments: list[str], prefix: str, query: str | None, body: bytes | None
) -> None:
    path = prefix + "/".join(segments) + (f"?{query}" if query is not None else "")
    status, headers, rbody = target.send(method, path, body)
    assert status in DOCUMENTED, (method, path, status, rbody[:300])
    if method != "HEAD":
        check_error_body(status, rbody, headers)


# -- malformed HTTP, straight to a socket ------------------------------------------------------


@st.composite
def raw_http(draw: st.DrawFn) -> tuple[bytes, bool]:
    """(request bytes, complete): complete requests must get an answer."""
    method = draw(st.sampled_from([b"GET", b"POST", b"get", b"P\xffST", b"", b"GET GET"]))
    target_path = draw(st.sampled_from([b"/v2/health/live", b"/v2/models/fraud/infer", b"*", b"http://x/v2",
                                        b"/v2/models/\xff\xfe/ready", b"/" + b"a" * 70_000, b"/v2\x00", b"v2"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9", b"", b"HTTP/1.1x"]))
    headers = [b"Host: fuzz"]
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from([b"X-Fuzz", b"Content-Type", b"Accept-Encoding", b"Inference-Header-Content-Length",
                                     b"Bad Name", b"X-\xff", b"Transfer-Encoding"]))
        value = draw(st.binary(max_size=32).filter(lambda b: b"\r" not in b and b"\n" not in b))
        headers.append(name + b": " + value)
    huge = draw(st.sampled_from([0, 0, 0, 16_384, 300_000]))
    if huge:
        headers.append(b"X-Huge: " + b"h" * huge)
    if draw(st.integers(0, 9)) == 0:
        headers += [b"X-Many-%d: y" % i for i in range(draw(st.integers(100, 5000)))]
    body = draw(st.binary(max_size=256))
    complete = True
    length = draw(st.sampled_from(["exact", "exact", "none", "negative", "junk", "double", "short", "chunked-bad"]))
    if length == "exact":
        headers.append(b"Content-Length: %d" % len(body))
    elif length == "negative":
        headers.append(b"Content-Length: -1")
    elif length == "junk":
        headers.append(b"Content-Length: 1x")
    elif length == "double":
        headers += [b"Content-Length: %d" % len(body), b"Content-Length: %d" % (len(body) + 1)]
    elif length == "short":  # declares more than it sends: the server waits for the rest
        headers.append(b"Content-Length: %d" % (len(body) + 10))
        complete = False
    elif length == "chunked-bad":
        headers.append(b"Transfer-Encoding: chunked")
        body = b"zz\r\n" + body + b"\r\n0\r\n\r\n"
    else:
        body = b""
    return method + b" " + target_path + b" " + version + b"\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + body, complete


def raw_exchange(port: int, data: bytes, wait_s: float) -> bytes:
    """Send ``data`` on a new connection; the first response's status line (b"" if none came)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before we finished writing: read what came
        got = b""
        try:
            while b"\r\n" not in got:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return got.split(b"\r\n", 1)[0] if b"\r\n" in got else b""


@SETTINGS
@given(case=raw_http())
def test_malformed_http_never_gets_a_5xx(target: Target, case: tuple[bytes, bool]) -> None:
    data, complete = case
    line = raw_exchange(target.daemon.port, data, wait_s=10.0 if complete else 0.05)
    if not line:
        target.raw_closed += 1
        assert not complete or target.daemon.alive, "the daemon died"
        return
    assert line.startswith(b"HTTP/1.1 "), line
    status = int(line.split()[1])
    target.record(status, repr(data[:300]))
    assert status in DOCUMENTED, (line, data[:300])


# -- afterwards ----------------------------------------------------------------------------------


def test_daemon_survived_every_case(target: Target, figures: Figures) -> None:
    """Runs last in this module: the daemon is alive, healthy, correct, and logged no traceback."""
    d = target.daemon
    assert d.alive, d.log()
    assert target.send("GET", "/v2/health/live")[0] == 200
    assert target.send("GET", "/v2/health/ready")[0] == 200
    x = np.linspace(-2, 2, 90, dtype=np.float32).reshape(3, 30)
    status, headers, body = target.send("POST", "/v2/models/fraud/infer", orjson.dumps(json_request(x)))
    assert status == 200
    np.testing.assert_allclose(decode_output(headers, body)[1], target.expect(x), rtol=1e-6, atol=1e-7)
    assert d.tracebacks() == [], d.log()[-5000:]
    assert target.bad == [], target.bad[:10]
    figures.add(cases=target.cases, statuses=dict(sorted(target.statuses.items())), closed_without_answer=target.raw_closed,
                fivexx_other_than_503=len(target.bad), daemon_rss_mib=round(d.rss_bytes() / 2**20, 1))
    assert target.cases >= MIN_CASES, f"only {target.cases} exchanges"


def test_half_closed_client_still_gets_its_answer(target: Target) -> None:
    answered = 0
    for _ in range(10):  # a race between the deferred write and the EOF: try it several times
        with socket.create_connection(("127.0.0.1", target.daemon.port), timeout=10) as s:
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            s.shutdown(socket.SHUT_WR)
            answered += s.recv(4096).startswith(b"HTTP/1.1 200")
    assert answered == 10, f"{10 - answered} of 10 half-closed requests got no answer"
