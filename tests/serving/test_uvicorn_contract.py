"""The contract between serving/http.py and uvicorn's private httptools protocol.

``CoalescingHttpToolsProtocol`` subclasses ``uvicorn.protocols.http.httptools_impl.HttpToolsProtocol``
(private API), overrides some of its methods, calls others and reads its attributes, and its
``data_received`` is a copy of uvicorn's with the head accounting added. pyproject.toml bounds
uvicorn to the versions tested; these tests say loudly, before any behaviour test fails in an
obscure way, what changed when a new uvicorn is tried. Update the copy in serving/http.py and
the recorded source below together, then raise the bound.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import re
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from edge_runtime.serving.http import CoalescingHttpToolsProtocol, CoalescingTransport, http_protocol
from harness.transport import MemoryTransport

# Methods of uvicorn's protocol that http.py overrides or calls, with the parameters it relies on.
METHODS = {
    "connection_made": ["self", "transport"],
    "connection_lost": ["self", "exc"],
    "eof_received": ["self"],
    "data_received": ["self", "data"],
    "on_headers_complete": ["self"],
    "on_message_complete": ["self"],
    "on_body": ["self", "body"],
    "on_response_complete": ["self"],
    "_unset_keepalive_if_required": ["self"],
    "send_400_response": ["self", "msg"],
    "_should_upgrade": ["self"],
    "handle_websocket_upgrade": ["self"],
    "_unsupported_upgrade_warning": ["self"],
}
# Attributes of a connected protocol that http.py reads.
INSTANCE_ATTRIBUTES = ["server_state", "loop", "parser", "logger", "cycle", "url", "headers", "transport", "flow"]
# Attributes of a request cycle that http.py reads or sets.
CYCLE_ATTRIBUTES = ["response_started", "response_complete", "more_body", "on_response", "body", "message_event"]
# sha256 of uvicorn's HttpToolsProtocol.data_received (white space folded), which http.py copies
# (uvicorn 0.54.0 and 0.55.0).
KNOWN_DATA_RECEIVED = "b4f9892d120d3dbdc29233f6a1f123eaad513074a93441dec3a14e2b59dba4cd"
# The same for HttpToolsProtocol.on_body, which http.py copies with the first piece held as bytes.
KNOWN_ON_BODY = "9492092df82580abb04b42f387dab12e6afc1de68f80c5cde0dd0ffd5cf350ad"


def _folded_source(fn: Any) -> str:
    return re.sub(r"\s+", " ", inspect.getsource(fn)).strip()


async def _async_app(scope: Any, receive: Any, send: Any) -> None:
    """Never called: the protocol is only connected, not fed a request."""


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_http_py_uses_exists_with_its_parameters(name: str) -> None:
    method = getattr(HttpToolsProtocol, name, None)
    assert callable(method), f"uvicorn's HttpToolsProtocol has no {name}() any more: serving/http.py relies on it"
    params = list(inspect.signature(method).parameters)
    assert params == METHODS[name], f"uvicorn's HttpToolsProtocol.{name}{inspect.signature(method)} changed"


def test_the_overrides_are_the_methods_uvicorn_calls() -> None:
    ours = {n for n, v in vars(CoalescingHttpToolsProtocol).items() if callable(v) and not n.startswith("__")}
    overridden = {n for n in ours if hasattr(HttpToolsProtocol, n)}
    assert overridden == {
        "connection_made", "connection_lost", "eof_received", "data_received",
        "on_headers_complete", "on_message_complete", "on_body",
    }, "serving/http.py overrides a different set of uvicorn methods than this contract lists"
    assert not (ours - overridden) & set(dir(HttpToolsProtocol)), "a private helper of http.py shadows a uvicorn name"


def test_data_received_is_the_one_http_py_copies() -> None:
    """http.py's data_received is uvicorn's plus the head accounting: a change upstream must be merged by hand."""
    digest = hashlib.sha256(_folded_source(HttpToolsProtocol.data_received).encode()).hexdigest()
    assert digest == KNOWN_DATA_RECEIVED, (
        "uvicorn's HttpToolsProtocol.data_received changed: compare it with "
        "CoalescingHttpToolsProtocol.data_received in serving/http.py, then record the new digest "
        f"{digest} here"
    )


def test_on_body_is_the_one_http_py_copies() -> None:
    """http.py's on_body is uvicorn's with the first piece held as it came, and relies on receive()
    handing on ``bytes(self.body)`` (no copy when the held body already is bytes)."""
    digest = hashlib.sha256(_folded_source(HttpToolsProtocol.on_body).encode()).hexdigest()
    assert digest == KNOWN_ON_BODY, (
        "uvicorn's HttpToolsProtocol.on_body changed: compare it with CoalescingHttpToolsProtocol.on_body "
        f"in serving/http.py, then record the new digest {digest} here"
    )
    assert '"body": bytes(self.body)' in inspect.getsource(RequestResponseCycle.receive)


def test_status_lines_and_the_request_cycle() -> None:
    for status in (400, 408, 503):
        assert STATUS_LINE[status].startswith(b"HTTP/1.1 %d " % status)
    params = inspect.signature(RequestResponseCycle.__init__).parameters
    assert "on_response" in params and "keep_alive" in params
    source = inspect.getsource(RequestResponseCycle)
    for attr in CYCLE_ATTRIBUTES:
        assert f"self.{attr}" in source, f"uvicorn's RequestResponseCycle has no {attr} any more"


def test_a_connected_protocol_has_what_http_py_reads() -> None:
    loop = asyncio.new_event_loop()
    try:
        config = Config(_async_app, http=http_protocol())
        config.load()
        proto = http_protocol()(config=config, server_state=ServerState(), app_state={}, _loop=loop)
        transport = MemoryTransport()
        proto.connection_made(transport)
        proto.data_received(b"GET /v2/health/live HTTP/1.1\r\nhost: a\r\n")  # a head, not yet complete
        for attr in INSTANCE_ATTRIBUTES:
            assert hasattr(proto, attr), f"uvicorn's HttpToolsProtocol no longer sets {attr}"
        assert isinstance(proto.transport, CoalescingTransport), "uvicorn no longer keeps the transport it is given"
        assert proto in proto.server_state.connections
        assert proto.cycle is None and proto.url == b"/v2/health/live" and isinstance(proto.headers, list)
        proto.connection_lost(None)
    finally:
        loop.close()


def test_the_module_is_where_http_py_imports_it_from() -> None:
    assert httptools_impl.HttpToolsProtocol is HttpToolsProtocol
    assert issubclass(CoalescingHttpToolsProtocol, HttpToolsProtocol)

