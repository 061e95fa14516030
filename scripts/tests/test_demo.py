"""The README's demo: in-process, then under a real uvicorn process."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fork_backend import ROOT


@pytest.fixture
def database_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'notes.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    return url


def test_demo_in_process(database_url: str, capsys: pytest.CaptureFixture[str]):
    from demo import app
    from fastapi.testclient import TestClient

    import fastapi

    with TestClient(app) as client:
        assert "engine for sqlite:///" in capsys.readouterr().out
        info = client.get("/").json()
        assert info["fastapi"] == fastapi.__version__
        assert "+lifespan." in fastapi.__version__
        assert info["database"] == "sqlite"
        created = client.post("/notes/", json={"text": "hello"})
        assert created.status_code == 201
        note = created.json()
        assert client.get(f"/notes/{note['id']}").json() == note
        assert client.get("/notes/").json() == [note]
        assert client.get("/notes/999").status_code == 404
        # One engine for the whole run.
        assert client.get("/").json()["engine_id"] == info["engine_id"]
    assert capsys.readouterr().out == "lifespan dependency: engine disposed\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_demo_under_uvicorn_tears_down_on_sigint(database_url: str):
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(ROOT / "scripts"),
            "demo:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                info = httpx.get(f"{base}/", timeout=2).json()
                break
            except httpx.TransportError:
                assert server.poll() is None, server.stdout and server.stdout.read()
                assert time.monotonic() < deadline, "demo did not start in 30 s"
                time.sleep(0.2)
        note = httpx.post(f"{base}/notes/", json={"text": "from a real server"})
        assert note.status_code == 201
        assert httpx.get(f"{base}/notes/").json() == [note.json()]
        assert httpx.get(f"{base}/").json()["engine_id"] == info["engine_id"]
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0, output
    lines = output.splitlines()
    created = next(i for i, line in enumerate(lines) if "engine for sqlite" in line)
    disposed = lines.index("lifespan dependency: engine disposed")
    assert created < disposed
    assert lines.count("lifespan dependency: engine disposed") == 1
    assert any("Shutting down" in line for line in lines[:disposed])
