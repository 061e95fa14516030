import json
import signal

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from .conftest import CLIENT_TIMEOUT, FULL_RUN, Serve, Server

pytestmark = [pytest.mark.servers, pytest.mark.timeout(60)]


def ws_url(server: Server) -> str:
    return f"ws://127.0.0.1:{server.port}/ws"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
@pytest.mark.parametrize("server_name", ["uvicorn", "hypercorn", "granian"])
def test_one_instance_per_run_torn_down_once_on_stop(
    serve: Serve, server_name: str, signum: int
):
    server = serve(server_name)
    server.wait_ready()
    from_async = httpx.get(f"{server.url}/async", timeout=CLIENT_TIMEOUT).json()
    from_sync = httpx.get(f"{server.url}/sync", timeout=CLIENT_TIMEOUT).json()
    with connect(
        ws_url(server), open_timeout=CLIENT_TIMEOUT, close_timeout=CLIENT_TIMEOUT
    ) as websocket:
        websocket.send("hello")
        from_websocket = json.loads(websocket.recv(timeout=CLIENT_TIMEOUT))
    assert from_websocket["message"] == "hello"
    for name in ("pool", "settings", "cache"):
        assert from_async[name] == from_sync[name]
        assert from_async[name]["closed"] is False
    for name in ("pool", "cache"):
        assert from_websocket[name] == from_async[name]

    # The client closed the WebSocket: its endpoint ends. (Work still running at
    # the stop is test_in_flight.py's.)
    server.wait_for_event("request ws ended")

    returncode = server.stop(signum)

    # uvicorn raises the signal again after its graceful shutdown, so that its
    # exit status tells how it was stopped.
    assert returncode in (0, -signum), server.log()
    assert server.lifecycle() == FULL_RUN
    # All in the one worker process that served the requests.
    assert {pid for pid, _ in server.events()} == {from_async["pool"]["pid"]}


@pytest.mark.parametrize("server_name", ["uvicorn", "gunicorn"])
def test_one_instance_per_worker_process(serve: Serve, server_name: str):
    if server_name == "uvicorn":
        server = serve(server_name, "--workers", "2")
    else:
        # --preload imports the app (and declares its dependencies) in the
        # parent process before it forks the workers.
        server = serve(server_name, "--workers", "2", "--preload")
    server.wait_for_event("cache setup", count=2)
    server.wait_ready()
    seen: dict[int, set[int]] = {}
    for _ in range(40):
        answer = httpx.get(f"{server.url}/async", timeout=CLIENT_TIMEOUT).json()
        assert answer["pool"]["closed"] is False
        seen.setdefault(answer["pool"]["pid"], set()).add(answer["pool"]["id"])
    # Every worker that answered always gave its own single instance.
    assert all(len(ids) == 1 for ids in seen.values())

    assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM), server.log()

    events = server.events()
    by_process: dict[int, list[str]] = {}
    for pid, event in events:
        by_process.setdefault(pid, []).append(event)
    # Two workers, each with one full run; nothing set up in the parent.
    assert server.process.pid not in by_process
    assert len(by_process) == 2
    assert set(seen) <= set(by_process)
    for worker_events in by_process.values():
        assert worker_events == FULL_RUN


@pytest.mark.parametrize(
    ("server_name", "lifespan_off"),
    [("uvicorn", ["--lifespan", "off"]), ("granian", ["--interface", "asginl"])],
)
def test_server_without_lifespan_gives_the_clear_error(
    serve: Serve, server_name: str, lifespan_off: list[str]
):
    server = serve(server_name, *lifespan_off)
    worker = server.wait_ready()
    for _ in range(3):
        response = httpx.get(f"{server.url}/async", timeout=CLIENT_TIMEOUT)
        assert response.status_code == 500
        # The worker is still serving.
        assert (
            httpx.get(f"{server.url}/health", timeout=CLIENT_TIMEOUT).status_code == 200
        )
    with pytest.raises(InvalidStatus):
        with connect(ws_url(server), open_timeout=CLIENT_TIMEOUT):
            pass  # pragma: no cover
    server.wait_for_connections_to_close(worker)

    assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM), server.log()

    # Three HTTP requests and one WebSocket, each logged with the clear error.
    message = (
        'FastAPIError: The lifespan-scoped dependency "get_pool" is not available: '
        "the app's lifespan did not run"
    )
    assert server.log().count(message) == 4, server.log()
    assert server.event_names() == []
