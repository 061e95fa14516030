"""
The application the PostgreSQL tests serve: an asyncpg connection pool as a
lifespan-scoped dependency, and a connection borrowed from it for each request.

It is configured through the environment, read when the app starts:

* ``DATABASE_URL``: the database (required).
* ``POOL_MIN_SIZE``, ``POOL_MAX_SIZE``: the pool's bounds (default 2 and 10).

The pool's connections carry the application name ``lifespan-pool PID``, PID being
the process that opened them, so that the server's ``pg_stat_activity`` tells
them apart from any other. The pool's set-up and teardown append events to the
file named by ``LIFESPAN_TEST_EVENTS``, as app.py's dependencies do.
"""

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

import asyncpg
from fastapi import Depends, FastAPI

APPLICATION_NAME = "lifespan-pool"


def record(event: str) -> None:
    with open(os.environ.get("LIFESPAN_TEST_EVENTS", os.devnull), "a") as file:
        file.write(f"{os.getpid()} {event}\n")


@dataclass
class Settings:
    database_url: str
    min_size: int = 2
    max_size: int = 10


def get_settings() -> Settings:
    return Settings(
        database_url=os.environ["DATABASE_URL"],
        min_size=int(os.environ.get("POOL_MIN_SIZE", "2")),
        max_size=int(os.environ.get("POOL_MAX_SIZE", "10")),
    )


async def get_pool(
    settings: Annotated[Settings, Depends(get_settings)],
) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=settings.min_size,
        max_size=settings.max_size,
        server_settings={"application_name": f"{APPLICATION_NAME} {os.getpid()}"},
    )
    record("pool opened")
    yield pool
    record("pool closing")
    await pool.close()
    record("pool closed")


Pool = Annotated[asyncpg.Pool, Depends(get_pool, scope="lifespan")]


async def get_connection(pool: Pool) -> AsyncIterator[asyncpg.Connection]:
    async with pool.acquire() as connection:
        yield connection


Connection = Annotated[asyncpg.Connection, Depends(get_connection)]

app = FastAPI()


@app.get("/health")
def health() -> dict[str, int]:
    return {"pid": os.getpid()}


@app.get("/query")
async def query(connection: Connection) -> dict[str, int]:
    backend = await connection.fetchval("SELECT pg_backend_pid()")
    return {"pid": os.getpid(), "backend": backend}


async def record_request() -> None:
    record("request started")


# Recorded before a connection is borrowed: the test knows when each request is
# in the app, running its query or waiting for a connection of the pool.
@app.get("/query-after-lock", dependencies=[Depends(record_request)])
async def query_after_lock(connection: Connection, lock: int) -> dict[str, int]:
    """A query that waits until it can take the advisory lock ``lock``."""
    backend = await connection.fetchval(
        "SELECT pg_backend_pid() FROM pg_advisory_xact_lock_shared($1)", lock
    )
    return {"pid": os.getpid(), "backend": backend}
