"""
The application the real-server tests serve.

Every lifespan dependency and the app's own lifespan append events to the file
named by ``LIFESPAN_TEST_EVENTS`` (one line per event: process id and event), so
that a test can read what each server process did after it has stopped. Faults
are injected through the environment:

* ``LIFESPAN_TEST_FAIL_SETUP=1``: the last lifespan dependency raises while
  being set up.
* ``LIFESPAN_TEST_SLOW_SETUP=SECONDS``: the last lifespan dependency sleeps while
  being set up.
* ``LIFESPAN_TEST_SLOW_TEARDOWN=SECONDS``: the last lifespan dependency sleeps
  while being torn down.
"""

import asyncio
import os
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse

EVENTS = os.environ.get("LIFESPAN_TEST_EVENTS", os.devnull)
FAIL_SETUP = os.environ.get("LIFESPAN_TEST_FAIL_SETUP") == "1"
SLOW_SETUP = float(os.environ.get("LIFESPAN_TEST_SLOW_SETUP", "0"))
SLOW_TEARDOWN = float(os.environ.get("LIFESPAN_TEST_SLOW_TEARDOWN", "0"))


def record(event: str) -> None:
    # One short write per event on a file opened for appending: the lines of
    # several worker processes never interleave.
    with open(EVENTS, "a") as file:
        file.write(f"{os.getpid()} {event}\n")


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
    await asyncio.sleep(SLOW_SETUP)
    record("cache setup")
    cache = Resource("cache")
    yield cache
    record("cache teardown started")
    await asyncio.sleep(SLOW_TEARDOWN)
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


@app.get("/slow")
async def read_slowly(pool: Pool, seconds: float) -> dict[str, Any]:
    record("request slow started")
    await asyncio.sleep(seconds)
    result = pool.use("/slow")
    record("request slow done")
    return result


@app.get("/slow-sync")
def read_slowly_in_a_thread(pool: Pool, seconds: float) -> dict[str, Any]:
    record("request slow sync started")
    time.sleep(seconds)
    result = pool.use("/slow-sync")
    record("request slow sync done")
    return result


@app.get("/stream")
def stream(pool: Pool, chunks: int, interval: float) -> StreamingResponse:
    async def generate() -> AsyncIterator[bytes]:
        record("request stream started")
        for number in range(chunks):
            pool.use("/stream")
            yield f"{number}\n".encode()
            await asyncio.sleep(interval)
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
