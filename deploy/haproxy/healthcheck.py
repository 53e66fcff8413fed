"""The bytes of a gRPC health check (grpc.health.v1.Health/Check, service "") over cleartext HTTP/2,
for HAProxy's ``tcp-check send-binary``, and the bytes of its SERVING answer for ``tcp-check expect``.

HAProxy 2.6's ``http-check`` cannot send this request (its ``body`` takes no NUL bytes, and
``expect status 200`` proves nothing since gRPC answers every call with HTTP 200 and puts the
outcome in trailers), so the check speaks HTTP/2 itself, as one write: the client connection
preface, an empty SETTINGS frame, a HEADERS frame opening stream 1, and a DATA frame carrying an
empty HealthCheckRequest and ending the stream. The server's own SETTINGS are never acknowledged:
the check is over (and its connection closed) long before a server would time that out.

Header block: HPACK "literal header field without indexing, new name" for every field (RFC 7541
6.2.2: a 0x00 byte, then name and value each as a 7-bit length and raw octets, Huffman bit clear),
so the bytes read plainly in a hex dump and no dynamic table is involved. ``:authority`` is not
optional here: gRPC C++ (the native transport) and grpcio both reject a request without it.

The answer: gRPC frames each message as a 1-byte compressed flag and a 4-byte big-endian length;
HealthCheckResponse{status: SERVING} is field 1, varint 1 (``08 01``), so the reply's DATA payload is
``00 00000002 0801``; NOT_SERVING is ``... 0802``. (UNKNOWN, value 0, would be an empty message.)
"""

from __future__ import annotations

import re
import socket
import struct
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # RFC 9113 3.4: the client connection preface
FRAME_DATA, FRAME_HEADERS, FRAME_SETTINGS = 0x0, 0x1, 0x4
FLAG_END_STREAM, FLAG_END_HEADERS = 0x1, 0x4
STREAM_ID = 1  # the first client-initiated stream
HEALTH_PATH = "/grpc.health.v1.Health/Check"
DEFAULT_AUTHORITY = "genserve"  # any value is accepted; it only has to be there

SERVING, NOT_SERVING = 1, 2  # grpc.health.v1.HealthCheckResponse.ServingStatus values


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """An HTTP/2 frame (RFC 9113 4.1): 24-bit length, type, flags, 31-bit stream id, payload."""
    if len(payload) >= 1 << 14:  # the smallest SETTINGS_MAX_FRAME_SIZE a peer may have
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds the default maximum frame size")
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream_id & 0x7FFFFFFF) + payload


def hpack_string(value: str) -> bytes:
    """An HPACK string literal (RFC 7541 5.2), Huffman bit clear; only the one-byte length form."""
    raw = value.encode("ascii")
    if len(raw) >= 0x7F:  # longer ones need the multi-byte integer encoding, which no field here needs
        raise ValueError(f"header field too long for this encoder: {value!r}")
    return bytes([len(raw)]) + raw


def hpack_literal(name: str, value: str) -> bytes:
    """A literal header field without indexing, new name (RFC 7541 6.2.2)."""
    if name != name.lower():
        raise ValueError(f"HTTP/2 header names are lowercase: {name!r}")
    return b"\x00" + hpack_string(name) + hpack_string(value)


def grpc_message(payload: bytes) -> bytes:
    """gRPC length-prefixed message: uncompressed flag 0, 4-byte big-endian length, the protobuf."""
    return b"\x00" + struct.pack(">I", len(payload)) + payload


def health_check_request(authority: str = DEFAULT_AUTHORITY) -> bytes:
    """Everything the check writes: preface, SETTINGS, HEADERS, DATA(HealthCheckRequest{service: ""})."""
    headers = b"".join(
        hpack_literal(name, value)
        for name, value in (
            (":method", "POST"),  # pseudo-headers first (RFC 9113 8.3)
            (":scheme", "http"),
            (":path", HEALTH_PATH),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        )
    )
    return (
        PREFACE
        + frame(FRAME_SETTINGS, 0, 0, b"")
        + frame(FRAME_HEADERS, FLAG_END_HEADERS, STREAM_ID, headers)
        + frame(FRAME_DATA, FLAG_END_STREAM, STREAM_ID, grpc_message(b""))  # service "" = an empty message
    )


def health_check_response(status: int) -> bytes:
    """The gRPC message a server answers with ``status``: what ``tcp-check expect binary`` looks for."""
    return grpc_message(bytes([0x08, status]))  # field 1 (status), wire type 0 (varint)


def response_data_frame(status: int) -> bytes:
    """The whole DATA frame carrying that answer on stream 1 (7-byte payload, no flags: the trailers
    end the stream), as gRPC C++ and grpcio both send it; matching the frame header too means a
    random PING payload can never pass for an answer."""
    return frame(FRAME_DATA, 0, STREAM_ID, health_check_response(status))


def expect_any_answer() -> str:
    """``tcp-check expect rbinary``: a regex over the hex dump of what was received, matching the
    answer frame with any status from UNKNOWN (0) to SERVICE_UNKNOWN (3)."""
    return response_data_frame(0).hex()[:-1] + "[0-3]"


def expect_serving() -> str:
    """``tcp-check expect binary``: the hex of the SERVING answer frame."""
    return response_data_frame(SERVING).hex()


def exchange(host: str, port: int, timeout: float = 1.0) -> bytes:
    """Send the check's bytes over a new TCP connection, as HAProxy does, and return what came back
    until the answer frame arrived, the server closed, or ``timeout`` s passed (b"" if the connection
    failed)."""
    deadline, received = time.monotonic() + timeout, b""
    answer = re.compile(expect_any_answer())
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(health_check_request())
            while (remaining := deadline - time.monotonic()) > 0:
                sock.settimeout(remaining)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
                if answer.search(received.hex()):
                    break
    except OSError:  # refused, reset, timed out
        pass
    return received


def probe(host: str, port: int, timeout: float = 1.0) -> int | None:
    """The status a server answers the check with (SERVING, NOT_SERVING, ...), or None without an
    answer: what HAProxy's check sees, without HAProxy."""
    received = exchange(host, port, timeout)
    return next((status for status in range(4) if response_data_frame(status) in received), None)


if __name__ == "__main__":  # print the strings the config template takes, for reading
    print("send-binary", health_check_request().hex())
    print("expect rbinary", expect_any_answer())
    print("expect binary", expect_serving())
