import asyncio
import json
import signal
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from .conftest import FULL_RUN, Serve, Server

pytestmark = [pytest.mark.servers, pytest.mark.timeout(120)]

HTTP_ASYNC = 350
HTTP_SYNC = 350
WEBSOCKETS = 300
MESSAGES = 2


async def one_websocket(server: Server, number: int) -> list[dict[str, Any]]:
    async with connect(
        f"ws://127.0.0.1:{server.port}/ws", open_timeout=60, close_timeout=10
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
    limits = httpx.Limits(max_connections=HTTP_ASYNC + HTTP_SYNC)
    async with httpx.AsyncClient(
        base_url=server.url, limits=limits, timeout=60
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


@pytest.mark.parametrize(
    ("server_name", "args"),
    [("uvicorn", []), ("hypercorn", ["--backlog", "2048"]), ("granian", [])],
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
    assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM), server.log()
    assert server.lifecycle() == FULL_RUN
    events = server.event_names()
    assert events.count("request ws ended") == WEBSOCKETS
    assert not [event for event in events if "after teardown" in event]
