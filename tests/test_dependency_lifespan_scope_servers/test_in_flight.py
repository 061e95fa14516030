import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from .conftest import Serve

pytestmark = [pytest.mark.servers, pytest.mark.timeout(60)]


def get_json(url: str) -> Any:
    response = httpx.get(url, timeout=20)
    assert response.status_code == 200, response.text
    return response.json()


def stream_lines(url: str) -> list[str]:
    with httpx.stream("GET", url, timeout=20) as response:
        assert response.status_code == 200
        return list(response.iter_lines())


def hold_websocket_open(url: str) -> None:
    with connect(url, open_timeout=5, close_timeout=5) as websocket:
        websocket.send("hello")
        websocket.recv(timeout=5)
        # Until the server closes it (uvicorn, granian) or cancels the endpoint
        # and drops the connection (hypercorn, after its graceful timeout).
        with pytest.raises(ConnectionClosed):
            websocket.recv(timeout=20)


@pytest.mark.parametrize("server_name", ["uvicorn", "hypercorn", "granian"])
def test_in_flight_work_ends_before_teardown(serve: Serve, server_name: str):
    server = serve(server_name)
    server.wait_ready()
    with ThreadPoolExecutor(4) as executor:
        slow = executor.submit(get_json, f"{server.url}/slow?seconds=2")
        slow_sync = executor.submit(get_json, f"{server.url}/slow-sync?seconds=2")
        stream = executor.submit(
            stream_lines, f"{server.url}/stream?chunks=10&interval=0.2"
        )
        websocket = executor.submit(
            hold_websocket_open, f"ws://127.0.0.1:{server.port}/ws"
        )
        for event in (
            "slow started",
            "slow sync started",
            "stream started",
            "ws answered",
        ):
            server.wait_for_event(f"request {event}")

        server.process.send_signal(signal.SIGTERM)

        assert slow.result(timeout=30)["closed"] is False
        assert slow_sync.result(timeout=30)["closed"] is False
        assert stream.result(timeout=30) == [str(number) for number in range(10)]
        websocket.result(timeout=30)
    server.wait_exit()

    events = server.event_names()
    assert not [event for event in events if "after teardown" in event]
    first_teardown = events.index("cache teardown started")
    for event in ("slow done", "slow sync done", "stream done", "ws ended"):
        assert events.index(f"request {event}") < first_teardown
