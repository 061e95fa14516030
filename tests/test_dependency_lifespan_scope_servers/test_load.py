import asyncio
import json
import signal
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from .conftest import FULL_RUN, Serve, Server

# One xdist group: two 1,000-connection loads never run at the same time. The
# timeout is a bound for a hang only (each step of the client has its own): a
# run takes seconds on an idle machine, over a minute on a very busy one.
pytestmark = [
    pytest.mark.servers,
    pytest.mark.xdist_group("servers-load"),
    pytest.mark.timeout(300),
]

HTTP_ASYNC = 350
HTTP_SYNC = 350
WEBSOCKETS = 300
MESSAGES = 2
# How long the client waits for each step (connect, handshake, response); the
# servers are told to wait at least as long for the client's request.
CLIENT_TIMEOUT = 60


async def one_websocket(server: Server, number: int) -> list[dict[str, Any]]:
    async with connect(
        f"ws://127.0.0.1:{server.port}/ws",
        open_timeout=CLIENT_TIMEOUT,
        close_timeout=10,
    ) as websocket:
        answers = []
        for message in range(MESSAGES):
            await websocket.send(f"{number}.{message}")
            answers.append(json.loads(await websocket.recv()))
        return answers


async def one_request(client: httpx.AsyncClient, path: str) -> dict[str, Any]:
    response = await client.get(path)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def load(server: Server) -> list[dict[str, Any]]:
    # One connection per request, closed after its response, as separate clients
    # do. (Kept alive, the pool would hold hundreds of idle connections, which
    # httpcore 1.0.9 scans for every request it queues or releases, quadratic
    # in their number: the client's CPU, not the server, then sets the pace.)
    limits = httpx.Limits(
        max_connections=HTTP_ASYNC + HTTP_SYNC, max_keepalive_connections=0
    )
    async with httpx.AsyncClient(
        base_url=server.url, limits=limits, timeout=CLIENT_TIMEOUT
    ) as client:
        requests = [one_request(client, "/async") for _ in range(HTTP_ASYNC)]
        requests += [one_request(client, "/sync") for _ in range(HTTP_SYNC)]
        websockets = [one_websocket(server, number) for number in range(WEBSOCKETS)]
        # All at once, interleaved.
        results = await asyncio.gather(*requests, *websockets)
    answers: list[dict[str, Any]] = []
    for result in results:
        answers.extend(result if isinstance(result, list) else [result])
    return answers


# The client starts its 1,000 connections at once and writes each request when
# its event loop gets back to it: on a busy machine, seconds after the server
# accepted the connection. Hypercorn's keep-alive timeout (5 s by
# default) also runs from the accept to the first request (TCPServer.run arms
# its idle task before reading; only a parsed request stops it), then closes
# the connection without a response. Granian's HTTP/1 header read timeout is
# 30 s; uvicorn arms its keep-alive timeout only after a response. Each server
# waits for a request at least as long as the client waits for an answer.
@pytest.mark.parametrize(
    ("server_name", "args"),
    [
        ("uvicorn", []),
        (
            "hypercorn",
            ["--backlog", "2048", "--keep-alive", str(CLIENT_TIMEOUT)],
        ),
        (
            "granian",
            ["--http1-header-read-timeout", str(CLIENT_TIMEOUT * 1000)],
        ),
    ],
)
def test_concurrent_requests_share_one_live_instance(
    serve: Serve, server_name: str, args: list[str]
):
    server = serve(server_name, *args)
    server.wait_ready()

    answers = asyncio.run(load(server))

    assert len(answers) == HTTP_ASYNC + HTTP_SYNC + WEBSOCKETS * MESSAGES
    for name in ("pool", "cache"):
        assert len({answer[name]["id"] for answer in answers}) == 1
        assert not any(answer[name]["closed"] for answer in answers)
    assert (
        len({answer["settings"]["id"] for answer in answers if "settings" in answer})
        == 1
    )
    # The clients closed their WebSockets: every endpoint ends.
    server.wait_for_event("request ws ended", count=WEBSOCKETS)
    assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM), server.log()
    assert server.lifecycle() == FULL_RUN
    events = server.event_names()
    assert events.count("request ws ended") == WEBSOCKETS
    assert not [event for event in events if "after teardown" in event]
