"""The control channel over each transport: the Unix socket and loopback TCP with a token.

Both run here on Linux (``WEBSYNC_CONTROL`` chooses); on Windows only TCP
exists.  The server is the real `ControlServer` on a real socket; the
requests come from `request`, as the CLI sends them, in a worker thread.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.clients import control_raw
from websync_fs.channel import TCP_NAME
from websync_fs.control import ControlServer, NotRunning, RequestFailed, request


async def _echo(op: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"op": op, "args": args}


async def test_requests_over_tcp_need_the_token_from_the_private_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBSYNC_CONTROL", "tcp")
    server = ControlServer(tmp_path, _echo)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        published = tmp_path / TCP_NAME
        assert published.stat().st_mode & 0o777 == 0o600 and not (tmp_path / "control.sock").exists()
        port, token = json.loads(published.read_text())["port"], json.loads(published.read_text())["token"]
        assert len(token) == 64
        answer = await trio.to_thread.run_sync(lambda: request(tmp_path, "echo", {"n": 1}))
        assert answer == {"op": "echo", "args": {"n": 1}}
        request_line = json.dumps({"op": "echo", "args": {}}).encode() + b"\n"
        for wrong in (b"", b"0" * 64, token[:-1].encode(), token.upper().encode() + b"x"):
            refused = await trio.to_thread.run_sync(control_raw, port, wrong + b"\n" + request_line)
            assert refused == {"ok": False, "error": "refused: the control token is wrong", "exit_code": 4}
        # A request sent without the token's line is taken as the token, and refused.
        refused = await trio.to_thread.run_sync(control_raw, port, request_line + request_line)
        assert refused["ok"] is False and "token" in refused["error"]
        answer = await trio.to_thread.run_sync(control_raw, port, token.encode() + b"\n" + request_line)
        assert answer == {"ok": True, "result": {"op": "echo", "args": {}}}
        nursery.cancel_scope.cancel()
    assert not published.exists()
    with pytest.raises(NotRunning):
        request(tmp_path, "echo")


async def test_a_file_left_by_a_killed_client_reads_as_not_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBSYNC_CONTROL", "tcp")
    with socket.socket() as sock:  # a port nobody listens on any more
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (tmp_path / TCP_NAME).write_text(json.dumps({"port": port, "token": "0" * 64}))
    with pytest.raises(NotRunning):
        request(tmp_path, "echo")
    (tmp_path / TCP_NAME).write_text("not json")
    with pytest.raises(NotRunning):
        request(tmp_path, "echo")


@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_a_refusal_keeps_its_sentence_and_exit_code_on_either_transport(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    monkeypatch.setenv("WEBSYNC_CONTROL", transport)

    async def refuse(op: str, args: dict[str, Any]) -> dict[str, Any]:
        from websync_fs.errors import ConfigError

        raise ConfigError(f"no {op} here")

    server = ControlServer(tmp_path, refuse)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        with pytest.raises(RequestFailed, match="no pin here") as refused:
            await trio.to_thread.run_sync(lambda: request(tmp_path, "pin"))
        assert refused.value.exit_code == 2
        nursery.cancel_scope.cancel()
