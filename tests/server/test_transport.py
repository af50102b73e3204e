"""TLS served by the server itself, the client's refusal of plain http, and the Host check."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.clients import Machine
from tests.servers import ServerProcess, add_user
from websync_fs.home import Home, Settings

PASSWORD = "alice-password"


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made by openssl."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.mark.timeout(120)
def test_the_server_serves_tls_and_the_client_trusts_a_given_ca(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    data = tmp_path / "data"
    add_user(data, "alice", PASSWORD)
    with ServerProcess.start(data, extra_args=("--tls-cert", str(cert), "--tls-key", str(key))) as server:
        assert server.url.startswith("https://127.0.0.1:")
        machine = Machine("laptop", tmp_path, server.url)
        refused = machine.cli("login", server.url, "--user", "alice", "--password-stdin", input=PASSWORD + "\n",
                              check=False)  # fmt: skip
        assert refused.returncode != 0
        assert "certificate was not accepted" in refused.stderr and "self-signed" in refused.stderr, refused.stderr
        machine.cli("login", server.url, "--user", "alice", "--ca", str(cert), "--password-stdin",
                    input=PASSWORD + "\n")  # fmt: skip
        status = json.loads(machine.cli("status", "--json").stdout)
        assert status["online"] and status["encrypted"], status
        with pytest.raises(httpx.HTTPError):
            httpx.get(server.url.replace("https://", "http://") + "/v1/health", timeout=10)


def test_plain_http_beyond_loopback_needs_the_users_say_so(tmp_path: Path) -> None:
    machine = Machine("laptop", tmp_path, "http://websync-test.invalid:8080")
    refused = machine.cli("login", machine.server_url, "--user", "alice", "--password-stdin", input="x\n", check=False)
    assert refused.returncode != 0 and "is not encrypted" in refused.stderr and "--insecure-http" in refused.stderr
    # Logged in that way all the same (as if --insecure-http was given): status says so.
    home = Home.locate(machine.home)
    home.save_settings(Settings(server=machine.server_url, user="alice", store="s" * 32, insecure_http=True))
    home.save_token("a-token")
    status = machine.cli("status", check=False).stdout
    assert "server:     http://websync-test.invalid:8080 (not encrypted)" in status, status


@pytest.mark.timeout(60)
def test_a_host_name_the_server_does_not_answer_to_is_refused(tmp_path: Path) -> None:
    with ServerProcess.start(tmp_path / "data") as server:
        assert httpx.get(f"{server.url}/v1/health").status_code == 200
        rebound = httpx.get(f"{server.url}/v1/health", headers={"Host": "evil.example"})
        assert rebound.status_code == 400 and "host name" in rebound.json()["message"]
    named = ("--allowed-host", "box.example.org")
    with ServerProcess.start(tmp_path / "data", extra_args=named) as server:
        assert httpx.get(f"{server.url}/v1/health", headers={"Host": "box.example.org:443"}).status_code == 200
        assert httpx.get(f"{server.url}/v1/health").status_code == 400


NGINX_CONF = """
daemon off;
pid {run}/nginx.pid;
error_log {run}/error.log;
worker_processes 1;
events {{}}
http {{
    access_log off;
    client_body_temp_path {run}/body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        # docs/operations.md shows the same block.
        client_max_body_size 20m;
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto https;
            proxy_read_timeout 90s;
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.timeout(120)
def test_a_machine_syncs_through_nginx_as_tls_proxy(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    data = tmp_path / "data"
    add_user(data, "alice", PASSWORD)
    run = tmp_path / "nginx"
    run.mkdir()
    with ServerProcess.start(data) as server:
        port = free_port()
        conf = run / "nginx.conf"
        conf.write_text(NGINX_CONF.format(run=run, port=port, cert=cert, key=key, upstream=server.port))
        nginx = subprocess.Popen(["/usr/sbin/nginx", "-c", str(conf), "-p", str(run)], stderr=subprocess.PIPE)
        try:
            url = f"https://127.0.0.1:{port}"
            trust = ssl.create_default_context(cafile=str(cert))
            deadline = time.monotonic() + 30
            while True:  # until nginx listens
                try:
                    httpx.get(f"{url}/v1/health", verify=trust, timeout=5).raise_for_status()
                    break
                except httpx.ConnectError:
                    assert nginx.poll() is None and time.monotonic() < deadline, nginx.stderr
                    time.sleep(0.1)
            machine = Machine("laptop", tmp_path, url)
            machine.cli("login", url, "--user", "alice", "--ca", str(cert), "--password-stdin", input=PASSWORD + "\n")
            status = json.loads(machine.cli("status", "--json").stdout)
            assert status["online"] and status["encrypted"], status
            wrong = httpx.post(f"{url}/v1/login", json={"user": "alice", "password": "wrong-one", "device": "x"},
                               verify=trust)  # fmt: skip
            assert wrong.status_code == 401
            # The proxy's view of the caller reaches the log (uvicorn trusts X-Forwarded-For from loopback).
            assert "failed login as user 'alice' from 127.0.0.1" in server.log()
        finally:
            nginx.terminate()
            nginx.wait(15)
