"""HPACK (RFC 7541) header decoding for the gRPC endpoint's HTTP/2 connections.

Only what a server needs: decoding the clients' header blocks, with the dynamic table and
Huffman-coded strings. Answers are encoded without the dynamic table (fixed byte strings
built by :func:`literal`), so the encoder has no state to keep in step with the peer.

Everything a client can vary is bounded: integers, string lengths (within the block),
the dynamic table (never above the size this server announced) and the decoded header
list (``max_list_bytes``, counted as RFC 7540 counts SETTINGS_MAX_HEADER_LIST_SIZE). A
malformed block raises :class:`HpackError`; the connection that sent it cannot continue,
because its dynamic table is no longer known.
"""

from __future__ import annotations

from edge_runtime.exceptions import InputError

TABLE_BYTES = 4096  # SETTINGS_HEADER_TABLE_SIZE: the HTTP/2 default, which this server never raises
ENTRY_OVERHEAD = 32

STATIC: tuple[tuple[bytes, bytes], ...] = tuple(
    (n.encode(), v.encode())
    for n, v in (
        (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"), (":path", "/index.html"),
        (":scheme", "http"), (":scheme", "https"), (":status", "200"), (":status", "204"), (":status", "206"),
        (":status", "304"), (":status", "400"), (":status", "404"), (":status", "500"), ("accept-charset", ""),
        ("accept-encoding", "gzip, deflate"), ("accept-language", ""), ("accept-ranges", ""), ("accept", ""),
        ("access-control-allow-origin", ""), ("age", ""), ("allow", ""), ("authorization", ""),
        ("cache-control", ""), ("content-disposition", ""), ("content-encoding", ""), ("content-language", ""),
        ("content-length", ""), ("content-location", ""), ("content-range", ""), ("content-type", ""),
        ("cookie", ""), ("date", ""), ("etag", ""), ("expect", ""), ("expires", ""), ("from", ""), ("host", ""),
        ("if-match", ""), ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""),
        ("if-unmodified-since", ""), ("last-modified", ""), ("link", ""), ("location", ""), ("max-forwards", ""),
        ("proxy-authenticate", ""), ("proxy-authorization", ""), ("range", ""), ("referer", ""), ("refresh", ""),
        ("retry-after", ""), ("server", ""), ("set-cookie", ""), ("strict-transport-security", ""),
        ("transfer-encoding", ""), ("user-agent", ""), ("vary", ""), ("via", ""), ("www-authenticate", ""),
    )
)

# Code lengths of RFC 7541 Appendix B, symbols 0..256 (256 = EOS). The code is canonical:
# codes are assigned in order of (length, symbol), so the lengths define it completely.
_LENGTHS = (
    "13,23,28,28,28,28,28,28,28,24,30,28,28,30,28,28,28,28,28,28,28,28,30,28,28,28,28,28,28,28,28,28,"
    "6,10,10,12,13,6,8,11,10,10,8,11,8,6,6,6,5,5,5,6,6,6,6,6,6,6,7,8,15,6,12,10,"
    "13,6,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,7,8,7,8,13,19,13,14,6,"
    "15,5,6,5,6,5,6,6,6,5,7,7,6,6,6,5,6,7,6,5,5,6,7,7,7,7,7,15,11,14,13,28,"
    "20,22,20,20,22,22,22,23,22,23,23,23,23,23,24,23,24,24,22,23,24,23,23,23,23,21,22,23,22,23,23,24,"
    "22,21,20,22,22,23,23,21,23,22,22,24,21,22,23,23,21,21,22,21,23,22,23,23,20,22,22,22,23,22,22,23,"
    "26,26,20,19,22,23,22,25,26,26,26,27,27,26,24,25,19,21,26,27,27,26,27,24,21,21,26,26,28,27,27,27,"
    "20,24,20,21,22,21,21,23,22,22,25,25,24,24,26,23,26,27,26,26,27,27,27,27,27,28,27,27,27,27,27,26,30"
)


class HpackError(InputError):
    """A header block this server cannot decode (the connection must end)."""


def huffman_codes() -> list[tuple[int, int]]:
    """``(code, length)`` of every symbol, built from the canonical code lengths."""
    lengths = [int(n) for n in _LENGTHS.split(",")]
    codes = [(0, 0)] * len(lengths)
    code = 0
    previous = 0
    for length, sym in sorted((n, s) for s, n in enumerate(lengths)):
        code <<= length - previous
        codes[sym] = (code, length)
        code += 1
        previous = length
    return codes


_DECODE = {(length << 32) | code: sym for sym, (code, length) in enumerate(huffman_codes()) if sym < 256}


def huffman_decode(data: bytes | memoryview) -> bytes:
    """Decode a Huffman-coded string; padding must be at most 7 one bits (RFC 7541 5.2)."""
    out = bytearray()
    code = 0
    length = 0
    table = _DECODE
    for byte in data:
        for shift in range(7, -1, -1):
            code = (code << 1) | ((byte >> shift) & 1)
            length += 1
            sym = table.get((length << 32) | code)
            if sym is not None:
                out.append(sym)
                code = 0
                length = 0
            elif length > 30:
                raise HpackError("header block: invalid Huffman code")
    if length > 7 or code != (1 << length) - 1:
        raise HpackError("header block: invalid Huffman padding")
    return bytes(out)


def _integer(data: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    """An HPACK integer whose prefix is in ``data[pos]``; returns (value, next position)."""
    mask = (1 << prefix_bits) - 1
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        if pos >= len(data):
            raise HpackError("header block: truncated integer")
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if value > 1 << 28 or (shift > 28 and byte & 0x80):
            raise HpackError("header block: integer too large")
        if not byte & 0x80:
            return value, pos


def _string(data: bytes, pos: int) -> tuple[bytes, int]:
    if pos >= len(data):
        raise HpackError("header block: truncated string")
    huffman = data[pos] & 0x80
    length, pos = _integer(data, pos, 7)
    end = pos + length
    if end > len(data):
        raise HpackError("header block: string runs past the block")
    raw = data[pos:end]
    return (huffman_decode(raw) if huffman else raw), end


class Decoder:
    """The decoding side of one connection's HPACK context."""

    __slots__ = ("table", "size", "max_size", "max_list_bytes")

    def __init__(self, max_list_bytes: int) -> None:
        self.table: list[tuple[bytes, bytes]] = []  # newest first
        self.size = 0
        self.max_size = TABLE_BYTES
        self.max_list_bytes = max_list_bytes

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= len(STATIC):
            return STATIC[index - 1]
        k = index - len(STATIC) - 1
        if 0 <= k < len(self.table):
            return self.table[k]
        raise HpackError(f"header block: index {index} is not in the table")

    def _add(self, name: bytes, value: bytes) -> None:
        self.table.insert(0, (name, value))
        self.size += len(name) + len(value) + ENTRY_OVERHEAD
        self._evict()

    def _evict(self) -> None:
        while self.size > self.max_size and self.table:
            n, v = self.table.pop()
            self.size -= len(n) + len(v) + ENTRY_OVERHEAD

    def decode(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """The header list of one complete header block."""
        headers: list[tuple[bytes, bytes]] = []
        total = 0
        pos = 0
        end = len(data)
        while pos < end:
            b = data[pos]
            if b & 0x80:
                index, pos = _integer(data, pos, 7)
                name, value = self._entry(index)
            elif b & 0xE0 == 0x20:
                size, pos = _integer(data, pos, 5)
                if size > TABLE_BYTES:
                    raise HpackError(f"header block: table size {size} exceeds {TABLE_BYTES}")
                self.max_size = size
                self._evict()
                continue
            else:
                indexing = b & 0xC0 == 0x40
                index, pos = _integer(data, pos, 6 if indexing else 4)
                if index:
                    name = self._entry(index)[0]
                else:
                    name, pos = _string(data, pos)
                value, pos = _string(data, pos)
                if indexing:
                    self._add(name, value)
            total += len(name) + len(value) + ENTRY_OVERHEAD
            if total > self.max_list_bytes:
                raise HpackError(f"header list exceeds {self.max_list_bytes} bytes")
            headers.append((name, value))
        return headers


def literal(name: bytes, value: bytes) -> bytes:
    """``name: value`` as a literal field without indexing (no Huffman): a stateless encoding."""
    return b"\x00" + _encode_int(len(name), 7) + name + _encode_int(len(value), 7) + value


def _encode_int(value: int, prefix_bits: int) -> bytes:
    mask = (1 << prefix_bits) - 1
    if value < mask:
        return bytes([value])
    out = bytearray([mask])
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
