"""
The application the real-server tests serve.

Every lifespan dependency and the app's own lifespan append events to the file
named by ``LIFESPAN_TEST_EVENTS`` (one line per event: process id and event), so
that a test can read what each server process did after it has stopped.

Work that must still be running at some point of a test (a set-up when the server
is stopped, a request when the server shuts down) waits at a gate that the test
opens when it decides: the file of that name in the folder
``LIFESPAN_TEST_GATES``. So the case a test wants is certain, whatever the
machine's speed, and never depends on a sleep being long enough. Faults are
injected through the environment:

* ``LIFESPAN_TEST_FAIL_SETUP=1``: the last lifespan dependency raises while
  being set up.
* ``LIFESPAN_TEST_HOLD_SETUP=1``: the last lifespan dependency waits at the gate
  ``setup`` while being set up.
* ``LIFESPAN_TEST_HOLD_TEARDOWN=1``: the last lifespan dependency waits at the
  gate ``teardown`` while being torn down.
"""

import asyncio
import os
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse

EVENTS = os.environ.get("LIFESPAN_TEST_EVENTS", os.devnull)
GATES = Path(os.environ.get("LIFESPAN_TEST_GATES", "."))
FAIL_SETUP = os.environ.get("LIFESPAN_TEST_FAIL_SETUP") == "1"
HOLD_SETUP = os.environ.get("LIFESPAN_TEST_HOLD_SETUP") == "1"
HOLD_TEARDOWN = os.environ.get("LIFESPAN_TEST_HOLD_TEARDOWN") == "1"
# How long a gate may stay shut: a bound for a test that died without opening it.
GATE_TIMEOUT = 300.0


def record(event: str) -> None:
    # One short write per event on a file opened for appending: the lines of
    # several worker processes never interleave.
    with open(EVENTS, "a") as file:
        file.write(f"{os.getpid()} {event}\n")


def gate_is_open(name: str, since: float) -> bool:
    if time.monotonic() - since > GATE_TIMEOUT:
        raise TimeoutError(f"the gate {name!r} stayed shut for {GATE_TIMEOUT} s")
    return (GATES / name).exists()


async def wait_at_gate(name: str) -> None:
    since = time.monotonic()
    while not gate_is_open(name, since):
        await asyncio.sleep(0.01)


def wait_at_gate_in_thread(name: str) -> None:
    since = time.monotonic()
    while not gate_is_open(name, since):
        time.sleep(0.01)


class Resource:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def use(self, where: str) -> dict[str, Any]:
        if self.closed:
            record(f"request used {self.name} after teardown: {where}")
        return {"id": id(self), "closed": self.closed, "pid": os.getpid()}


async def get_pool() -> AsyncIterator[Resource]:
    record("pool setup")
    pool = Resource("pool")
    yield pool
    pool.closed = True
    record("pool teardown")


def get_settings() -> Iterator[Resource]:
    record(f"settings setup in {threading.current_thread().name}")
    settings = Resource("settings")
    yield settings
    settings.closed = True
    record("settings teardown")


async def get_cache(
    pool: Annotated[Resource, Depends(get_pool, scope="lifespan")],
) -> AsyncIterator[Resource]:
    record("cache setup started")
    if FAIL_SETUP:
        raise RuntimeError("cache setup failed on purpose")
    if HOLD_SETUP:
        await wait_at_gate("setup")
    record("cache setup")
    cache = Resource("cache")
    yield cache
    record("cache teardown started")
    if HOLD_TEARDOWN:
        await wait_at_gate("teardown")
    cache.closed = True
    record("cache teardown")


Pool = Annotated[Resource, Depends(get_pool, scope="lifespan")]
Settings = Annotated[Resource, Depends(get_settings, scope="lifespan")]
Cache = Annotated[Resource, Depends(get_cache, scope="lifespan")]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncGenerator[None]:
    record("app startup")
    yield
    record("app shutdown")


app = FastAPI(lifespan=lifespan)


@app.get("/health")
def health() -> dict[str, int]:
    return {"pid": os.getpid()}


@app.get("/async")
async def read_async(pool: Pool, settings: Settings, cache: Cache) -> dict[str, Any]:
    return {
        "pool": pool.use("/async"),
        "settings": settings.use("/async"),
        "cache": cache.use("/async"),
    }


@app.get("/sync")
def read_sync(pool: Pool, settings: Settings, cache: Cache) -> dict[str, Any]:
    return {
        "pool": pool.use("/sync"),
        "settings": settings.use("/sync"),
        "cache": cache.use("/sync"),
    }


# The slow requests answer once the test opens their gate.
@app.get("/slow")
async def read_slowly(pool: Pool, gate: str) -> dict[str, Any]:
    record("request slow started")
    await wait_at_gate(gate)
    result = pool.use("/slow")
    record("request slow done")
    return result


@app.get("/slow-sync")
def read_slowly_in_a_thread(pool: Pool, gate: str) -> dict[str, Any]:
    record("request slow sync started")
    wait_at_gate_in_thread(gate)
    result = pool.use("/slow-sync")
    record("request slow sync done")
    return result


@app.get("/stream")
def stream(pool: Pool, chunks: int, gate: str) -> StreamingResponse:
    async def generate() -> AsyncIterator[bytes]:
        # The first chunk is sent at once, the others once the gate opens.
        pool.use("/stream")
        yield b"0\n"
        record("request stream started")
        await wait_at_gate(gate)
        for number in range(1, chunks):
            pool.use("/stream")
            yield f"{number}\n".encode()
        record("request stream done")

    return StreamingResponse(generate(), media_type="text/plain")


@app.websocket("/ws")
async def echo(websocket: WebSocket, pool: Pool, cache: Cache) -> None:
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive_text()
            await websocket.send_json(
                {"message": message, "pool": pool.use("/ws"), "cache": cache.use("/ws")}
            )
            record("request ws answered")
    except WebSocketDisconnect as disconnect:
        pool.use("/ws after disconnect")
        record(f"request ws closed {disconnect.code}")
    finally:
        # Also when the server cancels the endpoint at shutdown.
        record("request ws ended")
