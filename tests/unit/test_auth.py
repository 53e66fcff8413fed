"""Bearer tokens (serving/auth.py) and call records, request ids and log lines (serving/calls.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from genserve.serving import calls
from genserve.serving.auth import TokenAuth, TokenFileError, read_tokens
from genserve.serving.errors import Unauthenticated


def _tokens(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tokens"
    path.write_text(text)
    return path


def test_a_token_file_holds_several_tokens_and_skips_comments_and_blank_lines(tmp_path):
    auth = TokenAuth(_tokens(tmp_path, "# rotation: old, then new\n  old-token  \n\nnew-token\n"))
    for token in ("old-token", "new-token"):
        auth.check([("user-agent", "x"), ("authorization", f"Bearer {token}")])
    auth.check([("authorization", "bearer new-token")])  # the scheme is case-insensitive (RFC 6750)


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ([], "requires `authorization: Bearer <token>`"),
        ([("authorization", "Basic b2xkOnRva2Vu")], "must be `Bearer <token>`"),
        ([("authorization", "Bearer # rotation: old, then new")], "invalid bearer token"),
        ([("authorization", "Bearer old-token-but-longer")], "invalid bearer token"),
        ([("authorization-bin", b"Bearer old-token")], "requires"),
    ],
)
def test_calls_without_a_valid_bearer_token_are_unauthenticated(tmp_path, metadata, message):
    auth = TokenAuth(_tokens(tmp_path, "# rotation: old, then new\nold-token\n"))
    with pytest.raises(Unauthenticated, match=message.replace("`", ".").replace("<", ".").replace(">", ".")):
        auth.check(metadata)


def test_an_empty_token_file_refuses_to_start_and_a_bad_reload_keeps_the_tokens(tmp_path, caplog):
    with pytest.raises(TokenFileError, match="holds no token"):
        read_tokens(_tokens(tmp_path, "# nothing yet\n"))
    path = _tokens(tmp_path, "first\n")
    auth = TokenAuth(path)
    path.write_text("second\n")
    auth.reload()
    with pytest.raises(Unauthenticated):
        auth.check([("authorization", "Bearer first")])
    path.unlink()
    with caplog.at_level(logging.ERROR):
        auth.reload()
    assert "keeping the 1 tokens in use" in caplog.text
    auth.check([("authorization", "Bearer second")])


def test_a_request_id_is_the_clients_when_given_and_a_fresh_one_otherwise():
    assert calls.request_id_of([("x-request-id", "lb-123")]) == "lb-123"
    assert calls.request_id_of([("x-request-id", "x" * 1000)]) == "x" * calls.MAX_REQUEST_ID
    fresh = {calls.request_id_of([]) for _ in range(100)}
    assert len(fresh) == 100 and all(len(i) == 32 for i in fresh)


def test_log_lines_inside_a_call_carry_its_request_id_and_the_access_line_its_fields():
    record, token = calls.begin("/genserve.v1.GenerationService/Generate", [("x-request-id", "abc")], "ipv4:1.2.3.4:5")
    calls.name("dcgan-mnist", 4)
    inside = logging.LogRecord("genserve.serving.x", logging.INFO, __file__, 1, "rejected: %s", ("why",), None)
    calls.RequestIdFilter().filter(inside)
    record.code = "RESOURCE_EXHAUSTED"
    calls.end(record, token)
    outside = logging.LogRecord("genserve.serving.x", logging.INFO, __file__, 1, "idle", (), None)
    calls.RequestIdFilter().filter(outside)
    line = json.loads(calls.JsonFormatter().format(inside))
    assert (line["message"], line["request_id"], line["level"]) == ("rejected: why", "abc", "INFO")
    assert "request_id" not in json.loads(calls.JsonFormatter().format(outside))
    access = logging.LogRecord("genserve.access", logging.INFO, __file__, 1, "%s", ("m",), None)
    access.call = record.fields()
    fields = json.loads(calls.JsonFormatter().format(access))
    assert fields["model"] == "dcgan-mnist" and fields["images"] == 4 and fields["status"] == "RESOURCE_EXHAUSTED"
    assert fields["peer"] == "ipv4:1.2.3.4:5" and fields["latency_ms"] >= 0
    text = calls.TextFormatter(calls.TEXT_FORMAT).format(access)
    assert "model=dcgan-mnist images=4" in text and "request_id=abc" in text
