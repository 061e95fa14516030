import asyncio
import logging
import subprocess
import sys
import threading
from collections.abc import AsyncGenerator, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import Annotated, Any

import anyio
import pytest
from fastapi import Depends, FastAPI
from fastapi.dependencies import lifespan_startup
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode

# Each test waits on the other dependency at most this long: only concurrent
# set-ups meet within it, and a failing test never hangs.
MEET_SECONDS = 5


class SetupError(Exception):
    pass


def start_with_timeout(app: FastAPI, seconds: float) -> list[str]:
    """
    Start the app's lifespan as a server with a startup timeout of `seconds`
    does; return the types of the messages the app sent.
    """
    sent: list[str] = []

    async def main() -> None:
        send_stream, receive_stream = anyio.create_memory_object_stream[Any](10)

        async def send(message: Any) -> None:
            sent.append(message["type"])

        async with send_stream, receive_stream:
            await send_stream.send({"type": "lifespan.startup"})
            with anyio.move_on_after(seconds):
                await app(
                    {"type": "lifespan", "state": {}}, receive_stream.receive, send
                )

    anyio.run(main)
    return sent


def test_concurrent_is_off_by_default():
    # In a new interpreter: a test run may switch the default on for every app.
    code = "import fastapi; print(fastapi.FastAPI().concurrent_lifespan_dependencies)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout == "False\n", result.stderr


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_independent_async_dependencies_start_together(backend: str):
    # Each one waits for the other to have started: set up one after the
    # other, the first would wait in vain.
    started = {"a": anyio.Event(), "b": anyio.Event()}

    async def get_a() -> str:
        started["a"].set()
        with anyio.fail_after(MEET_SECONDS):
            await started["b"].wait()
        return "a"

    async def get_b() -> str:
        started["b"].set()
        with anyio.fail_after(MEET_SECONDS):
            await started["a"].wait()
        return "b"

    app = FastAPI(concurrent_lifespan_dependencies=True)

    @app.get("/")
    def read(
        a: Annotated[str, Depends(get_a, scope="lifespan")],
        b: Annotated[str, Depends(get_b, scope="lifespan")],
    ) -> list[str]:
        return [a, b]

    with TestClient(app, backend=backend) as client:
        assert client.get("/").json() == ["a", "b"]


def test_independent_sync_dependencies_start_together_in_the_thread_pool():
    barrier = threading.Barrier(2, timeout=MEET_SECONDS)
    threads: set[int] = set()

    def get_a() -> Iterator[str]:
        barrier.wait()
        threads.add(threading.get_ident())
        yield "a"
        barrier.wait()

    def get_b() -> Iterator[str]:
        barrier.wait()
        threads.add(threading.get_ident())
        yield "b"
        barrier.wait()

    app = FastAPI(concurrent_lifespan_dependencies=True)

    @app.get("/")
    def read(
        a: Annotated[str, Depends(get_a, scope="lifespan")],
        b: Annotated[str, Depends(get_b, scope="lifespan")],
    ) -> list[str]:
        return [a, b]

    with TestClient(app) as client:
        assert client.get("/").json() == ["a", "b"]
    assert len(threads) == 2
    assert threading.main_thread().ident not in threads


def test_a_dependency_starts_once_what_it_needs_is_ready():
    events: list[str] = []
    settings_ready = anyio.Event()

    async def get_settings() -> AsyncGenerator[str]:
        await anyio.sleep(0.05)
        events.append("settings up")
        settings_ready.set()
        yield "settings"
        events.append("settings down")

    async def get_pool(
        settings: Annotated[str, Depends(get_settings, scope="lifespan")],
    ) -> AsyncGenerator[str]:
        assert settings_ready.is_set()
        events.append("pool up")
        yield f"pool({settings})"
        events.append("pool down")

    async def get_cache() -> AsyncGenerator[str]:
        # Independent: doesn't wait for the settings.
        events.append("cache up")
        yield "cache"
        events.append("cache down")

    app = FastAPI(concurrent_lifespan_dependencies=True)

    @app.get("/")
    def read(
        pool: Annotated[str, Depends(get_pool, scope="lifespan")],
        cache: Annotated[str, Depends(get_cache, scope="lifespan")],
    ) -> list[str]:
        return [pool, cache]

    with TestClient(app) as client:
        assert client.get("/").json() == ["pool(settings)", "cache"]
        assert events == ["cache up", "settings up", "pool up"]
    assert sorted(events[3:]) == ["cache down", "pool down", "settings down"]
    assert events.index("pool down") < events.index("settings down")


def test_shared_unscoped_sub_dependency_runs_once_when_both_start_together():
    calls: list[str] = []
    both_waiting = anyio.Event()
    waiting: list[str] = []

    async def get_config() -> dict[str, str]:
        calls.append("config")
        await anyio.sleep(0.01)
        return {"dsn": "db"}

    async def wait_for_both(name: str) -> None:
        waiting.append(name)
        if len(waiting) == 2:
            both_waiting.set()
        with anyio.fail_after(MEET_SECONDS):
            await both_waiting.wait()

    async def get_pool(
        config: Annotated[dict[str, str], Depends(get_config)],
    ) -> dict[str, str]:
        await wait_for_both("pool")
        return config

    async def get_cache(
        config: Annotated[dict[str, str], Depends(get_config)],
    ) -> dict[str, str]:
        await wait_for_both("cache")
        return config

    app = FastAPI(concurrent_lifespan_dependencies=True)

    @app.get("/")
    def read(
        pool: Annotated[dict[str, str], Depends(get_pool, scope="lifespan")],
        cache: Annotated[dict[str, str], Depends(get_cache, scope="lifespan")],
    ) -> bool:
        return pool is cache

    with TestClient(app) as client:
        assert client.get("/").json() is True
    assert calls == ["config"]


def test_a_dependency_may_run_a_task_group_around_its_yield():
    async def get_ticker() -> AsyncGenerator[list[int]]:
        ticks: list[int] = []

        async def tick() -> None:
            while True:
                ticks.append(len(ticks))
                await anyio.sleep(0.005)

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(tick)
            yield ticks
            task_group.cancel_scope.cancel()

    app = FastAPI(concurrent_lifespan_dependencies=True)

    @app.get("/")
    async def read(
        ticks: Annotated[list[int], Depends(get_ticker, scope="lifespan")],
    ) -> int:
        seen = len(ticks)
        with anyio.fail_after(MEET_SECONDS):
            while len(ticks) < seen + 3:
                await anyio.sleep(0.005)
        return len(ticks) - seen

    with TestClient(app) as client:
        assert client.get("/").json() >= 3
        state = dict(client.app_state)
    (ticks,) = next(iter(state.values())).values()
    stopped_at = len(ticks)
    anyio.run(anyio.sleep, 0.05)
    assert len(ticks) == stopped_at


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_failure_cancels_the_set_ups_still_running_and_tears_down_the_rest(
    backend: str,
):
    events: list[str] = []

    async def get_settings() -> AsyncGenerator[str]:
        events.append("settings up")
        yield "settings"
        events.append("settings down")

    async def get_pool(
        settings: Annotated[str, Depends(get_settings, scope="lifespan")],
    ) -> AsyncGenerator[str]:
        events.append("pool up")
        yield "pool"
        events.append("pool down")

    async def get_slow() -> AsyncGenerator[str]:
        events.append("slow started")
        try:
            await anyio.sleep(MEET_SECONDS * 2)
        except anyio.get_cancelled_exc_class():
            events.append("slow cancelled")
            raise
        yield "slow"  # pragma: no cover

    async def get_broken(
        pool: Annotated[str, Depends(get_pool, scope="lifespan")],
    ) -> str:
        # Fails once the others are under way.
        await anyio.sleep(0.05)
        raise SetupError("cannot connect")

    app = FastAPI(concurrent_lifespan_dependencies=True)

    @app.get("/")
    def read(
        slow: Annotated[str, Depends(get_slow, scope="lifespan")],
        broken: Annotated[str, Depends(get_broken, scope="lifespan")],
    ) -> None:
        pass  # pragma: no cover

    with pytest.raises(SetupError, match="cannot connect") as exc:
        with TestClient(app, backend=backend):
            pass  # pragma: no cover
    assert exc.value.__notes__ == [
        'while setting up the lifespan-scoped dependency "get_broken"'
    ]
    # The order of independent set-ups is the backend's (trio's varies).
    assert sorted(events) == sorted(
        [
            "slow started",
            "settings up",
            "pool up",
            "slow cancelled",
            "pool down",
            "settings down",
        ]
    )
    assert events[-3:] == ["slow cancelled", "pool down", "settings down"]
    assert events.index("settings up") < events.index("pool up")


def test_every_set_up_failure_is_kept_the_first_raised():
    config_started = anyio.Event()
    first_failed = anyio.Event()

    async def get_first() -> str:
        await config_started.wait()
        first_failed.set()
        raise SetupError("first")

    async def get_config() -> str:
        # Unscoped: the failure names the lifespan dependency that needs it.
        config_started.set()
        with anyio.CancelScope(shield=True):
            await first_failed.wait()
        raise SetupError("second")

    async def get_second(config: Annotated[str, Depends(get_config)]) -> str:
        return config  # pragma: no cover

    app = FastAPI(concurrent_lifespan_dependencies=True)

    @app.get("/")
    def read(
        first: Annotated[str, Depends(get_first, scope="lifespan")],
        second: Annotated[str, Depends(get_second, scope="lifespan")],
    ) -> None:
        pass  # pragma: no cover

    with pytest.raises(SetupError, match="first") as exc:
        with TestClient(app):
            pass  # pragma: no cover
    assert exc.value.__notes__ == [
        'while setting up the lifespan-scoped dependency "get_first"',
        "Another lifespan dependency set-up failed: SetupError('second')",
    ]


def test_cancelled_startup_tears_down_what_was_set_up():
    events: list[str] = []

    async def get_pool() -> AsyncGenerator[str]:
        events.append("pool up")
        yield "pool"
        events.append("pool down")

    async def get_slow() -> str:
        events.append("slow started")
        await anyio.sleep(MEET_SECONDS * 2)
        return "slow"  # pragma: no cover

    app = FastAPI(concurrent_lifespan_dependencies=True)

    @app.get("/")
    def read(
        pool: Annotated[str, Depends(get_pool, scope="lifespan")],
        slow: Annotated[str, Depends(get_slow, scope="lifespan")],
    ) -> None:
        pass  # pragma: no cover

    # A server's startup timeout, while "slow" is still setting up.
    assert start_with_timeout(app, 0.3) == ["lifespan.startup.failed"]
    assert events == ["pool up", "slow started", "pool down"]


def test_a_failure_without_waiting_starts_nothing_more():
    events: list[str] = []

    async def get_broken() -> str:
        raise SetupError("cannot connect")

    async def get_pool() -> AsyncGenerator[str]:
        events.append("pool up")  # pragma: no cover
        yield "pool"  # pragma: no cover

    async def get_settings() -> str:
        events.append("settings up")  # pragma: no cover
        return "settings"  # pragma: no cover

    app = FastAPI(concurrent_lifespan_dependencies=True)

    @app.get("/")
    def read(
        broken: Annotated[str, Depends(get_broken, scope="lifespan")],
        pool: Annotated[str, Depends(get_pool, scope="lifespan")],
        settings: Annotated[str, Depends(get_settings, scope="lifespan")],
    ) -> None:
        pass  # pragma: no cover

    with pytest.raises(SetupError, match="cannot connect") as exc:
        with TestClient(app):
            pass  # pragma: no cover
    assert exc.value.__notes__ == [
        'while setting up the lifespan-scoped dependency "get_broken"'
    ]
    # Started before the failure (its task, or its turn after get_broken in the
    # same task), but not run yet: neither ever set up.
    assert events == []


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_set_up_that_outlives_its_cancellation_is_kept_and_the_failure_raised(
    backend: str,
):
    events: list[str] = []
    started = anyio.Event()

    async def get_stubborn() -> str:
        started.set()
        try:
            # Ready to run again at each step: the cancellation is thrown in.
            with anyio.fail_after(MEET_SECONDS):
                while True:
                    await anyio.sleep(0)
        except anyio.get_cancelled_exc_class():
            # Against the rules of cancellation, but legal.
            events.append("stubborn cancelled")
        return "stubborn"

    async def get_broken() -> AsyncGenerator[str]:
        await started.wait()
        raise SetupError("cannot connect")
        yield "broken"  # pragma: no cover

    async def get_user(
        stubborn: Annotated[str, Depends(get_stubborn, scope="lifespan")],
    ) -> str:
        events.append("user started")  # pragma: no cover
        return stubborn  # pragma: no cover

    app = FastAPI(concurrent_lifespan_dependencies=True)

    @app.get("/")
    def read(
        user: Annotated[str, Depends(get_user, scope="lifespan")],
        broken: Annotated[str, Depends(get_broken, scope="lifespan")],
    ) -> None:
        pass  # pragma: no cover

    with pytest.raises(SetupError, match="cannot connect"):
        with TestClient(app, backend=backend):
            pass  # pragma: no cover
    # What needs it never starts once a set-up failed.
    assert events == ["stubborn cancelled"]


def test_a_set_up_that_outlives_a_cancelled_startup_is_torn_down():
    events: list[str] = []

    async def get_pool() -> AsyncGenerator[str]:
        events.append("pool started")
        # Not interrupted by the server's startup timeout.
        with anyio.CancelScope(shield=True):
            await anyio.sleep(0.5)
        events.append("pool up")
        yield "pool"
        events.append("pool down")

    app = FastAPI(concurrent_lifespan_dependencies=True)

    @app.get("/")
    def read(pool: Annotated[str, Depends(get_pool, scope="lifespan")]) -> None:
        pass  # pragma: no cover

    assert start_with_timeout(app, 0.1) == ["lifespan.startup.failed"]
    assert events == ["pool started", "pool up", "pool down"]


def test_the_app_lifespan_error_is_raised_as_is():
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncGenerator[None]:
        raise SetupError("app startup failed")
        yield  # pragma: no cover

    async def get_pool() -> str:
        return "pool"  # pragma: no cover

    app = FastAPI(lifespan=lifespan, concurrent_lifespan_dependencies=True)

    @app.get("/")
    def read(pool: Annotated[str, Depends(get_pool, scope="lifespan")]) -> None:
        pass  # pragma: no cover

    with pytest.raises(SetupError, match="app startup failed"):
        with TestClient(app):
            pass  # pragma: no cover


@pytest.mark.parametrize("concurrent", [False, True])
def test_each_set_up_and_teardown_is_logged(
    concurrent: bool, caplog: pytest.LogCaptureFixture
):
    async def get_pool() -> AsyncGenerator[str]:
        yield "pool"

    def get_settings() -> str:
        return "settings"

    def get_broken_teardown() -> Iterator[str]:
        yield "broken"
        raise SetupError("teardown failed")

    app = FastAPI(concurrent_lifespan_dependencies=concurrent)

    @app.get("/")
    def read(
        pool: Annotated[str, Depends(get_pool, scope="lifespan")],
        settings: Annotated[str, Depends(get_settings, scope="lifespan")],
        broken: Annotated[str, Depends(get_broken_teardown, scope="lifespan")],
    ) -> None:
        pass  # pragma: no cover

    with caplog.at_level(logging.DEBUG, logger="fastapi"):
        with pytest.raises(SetupError):
            with TestClient(app):
                pass
    records = [r for r in caplog.records if hasattr(r, "lifespan_dependency")]
    prefix = f"{__name__}.test_each_set_up_and_teardown_is_logged.<locals>."
    seen = {
        (
            r.lifespan_dependency.removeprefix(prefix),  # type: ignore[attr-defined]
            r.lifespan_phase,  # type: ignore[attr-defined]
            r.outcome,  # type: ignore[attr-defined]
        )
        for r in records
    }
    assert seen == {
        ("get_pool", "set_up", "ok"),
        ("get_settings", "set_up", "ok"),
        ("get_broken_teardown", "set_up", "ok"),
        ("get_pool", "tear_down", "ok"),
        ("get_broken_teardown", "tear_down", f"failed: {__name__}.SetupError"),
    }
    assert len(records) == 5
    assert all(r.levelno == logging.DEBUG for r in records)
    assert all(r.duration >= 0 for r in records)  # type: ignore[attr-defined]
    assert (
        records[0]
        .getMessage()
        .startswith(
            f"Lifespan dependency {records[0].lifespan_dependency} set up: ok ("  # type: ignore[attr-defined]
        )
    )


def test_apps_without_lifespan_dependencies_log_nothing_new(
    caplog: pytest.LogCaptureFixture,
):
    app = FastAPI(concurrent_lifespan_dependencies=True)

    @app.get("/")
    def read() -> str:
        return "ok"

    with caplog.at_level(logging.DEBUG, logger="fastapi"):
        with TestClient(app) as client:
            assert client.get("/").json() == "ok"
    assert not [r for r in caplog.records if hasattr(r, "lifespan_dependency")]


def traced_app(
    concurrent: bool, **telemetry: Any
) -> tuple[FastAPI, InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    app = FastAPI(
        telemetry={"tracer_provider": provider, **telemetry},
        concurrent_lifespan_dependencies=concurrent,
    )
    return app, spans


async def get_traced_settings() -> str:
    return "settings"


async def get_traced_pool(
    settings: Annotated[str, Depends(get_traced_settings, scope="lifespan")],
) -> AsyncGenerator[str]:
    yield "pool"
    raise SetupError("pool teardown failed")


@pytest.mark.parametrize("concurrent", [False, True])
def test_each_set_up_and_teardown_is_a_span(concurrent: bool):
    app, spans = traced_app(concurrent)

    @app.get("/")
    def read(pool: Annotated[str, Depends(get_traced_pool, scope="lifespan")]) -> str:
        return pool

    with pytest.raises(SetupError):
        with TestClient(app) as client:
            assert client.get("/").json() == "pool"
    finished = spans.get_finished_spans()
    by_name = {span.name: span for span in finished if "lifespan" in span.name}
    startup = by_name["fastapi.lifespan.startup"]
    shutdown = by_name["fastapi.lifespan.shutdown"]
    lifespan_spans = [
        span
        for span in finished
        if span.parent is not None
        and span.parent.span_id in (startup.context.span_id, shutdown.context.span_id)
    ]
    described = sorted(
        (
            span.name.removeprefix(f"{__name__}."),
            span.attributes["fastapi.lifespan.phase"],
            span.parent.span_id == startup.context.span_id,
        )
        for span in lifespan_spans
        if span.parent is not None and span.attributes is not None
    )
    assert described == [
        ("get_traced_pool", "set_up", True),
        ("get_traced_pool", "tear_down", False),
        ("get_traced_settings", "set_up", True),
    ]
    (failed,) = [
        span for span in lifespan_spans if span.status.status_code == StatusCode.ERROR
    ]
    assert failed.attributes is not None
    assert failed.attributes["fastapi.lifespan.phase"] == "tear_down"
    assert failed.attributes["error.type"] == f"{__name__}.SetupError"
    assert failed.attributes["code.function.name"] == f"{__name__}.get_traced_pool"
    assert [event.name for event in failed.events] == ["exception"]


def test_a_failed_startup_span_records_the_error():
    app, spans = traced_app(False)

    async def get_broken() -> str:
        raise SetupError("cannot connect")

    @app.get("/")
    def read(broken: Annotated[str, Depends(get_broken, scope="lifespan")]) -> None:
        pass  # pragma: no cover

    with pytest.raises(SetupError):
        with TestClient(app):
            pass  # pragma: no cover
    by_name = {span.name: span for span in spans.get_finished_spans()}
    startup = by_name["fastapi.lifespan.startup"]
    assert startup.status.status_code == StatusCode.ERROR
    assert startup.attributes is not None
    assert startup.attributes["error.type"] == f"{__name__}.SetupError"


@pytest.mark.parametrize("telemetry", [{"tracing": False}, {}])
def test_no_spans_without_tracing(telemetry: dict[str, Any]):
    if telemetry:
        app, spans = traced_app(False, **telemetry)
    else:
        # No provider configured: the app's telemetry is off.
        app, spans = FastAPI(), InMemorySpanExporter()

    @app.get("/")
    def read(
        pool: Annotated[str, Depends(get_traced_settings, scope="lifespan")],
    ) -> str:
        return pool

    with TestClient(app) as client:
        assert client.get("/").json() == "settings"
    assert not [s for s in spans.get_finished_spans() if "lifespan" in s.name]


def test_apps_without_lifespan_dependencies_trace_nothing_new():
    app, spans = traced_app(True)

    @app.get("/")
    def read() -> str:
        return "ok"

    with TestClient(app) as client:
        assert client.get("/").json() == "ok"
    names = [span.name for span in spans.get_finished_spans()]
    assert "GET /" in names
    assert not [name for name in names if "lifespan" in name]


@pytest.mark.parametrize("concurrent", [False, True])
def test_a_failed_shutdown_span_records_the_error(concurrent: bool):
    app, spans = traced_app(concurrent)

    @app.get("/")
    def read(pool: Annotated[str, Depends(get_traced_pool, scope="lifespan")]) -> str:
        return pool

    with pytest.raises(SetupError), TestClient(app):
        ...
    by_name = {span.name: span for span in spans.get_finished_spans()}
    shutdown = by_name["fastapi.lifespan.shutdown"]
    assert shutdown.status.status_code == StatusCode.ERROR
    assert shutdown.attributes is not None
    assert shutdown.attributes["error.type"] == f"{__name__}.SetupError"
    assert by_name["fastapi.lifespan.startup"].status.status_code != StatusCode.ERROR


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("concurrent", [False, True])
def test_a_crash_in_a_dependency_task_group_ends_the_lifespan_with_its_error(
    concurrent: bool, backend: str
):
    events: list[str] = []

    async def crash() -> None:
        await anyio.sleep(0)
        raise RuntimeError("boom")

    async def get_worker() -> AsyncGenerator[str]:
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(crash)
            yield "worker"
        events.append("worker down")  # pragma: no cover

    async def get_pool() -> AsyncGenerator[str]:
        yield "pool"
        events.append("pool down")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncGenerator[None]:
        yield
        events.append("app shutdown")

    app = FastAPI(lifespan=lifespan, concurrent_lifespan_dependencies=concurrent)

    @app.get("/")
    def read(
        pool: Annotated[str, Depends(get_pool, scope="lifespan")],
        worker: Annotated[str, Depends(get_worker, scope="lifespan")],
    ) -> None: ...

    sent: list[str] = []

    async def main() -> BaseException | None:
        send_stream, receive_stream = anyio.create_memory_object_stream[Any](10)

        async def send(message: Any) -> None:
            sent.append(message["type"])

        async with send_stream, receive_stream:
            await send_stream.send({"type": "lifespan.startup"})
            try:
                with anyio.fail_after(MEET_SECONDS):
                    await app(
                        {"type": "lifespan", "state": {}}, receive_stream.receive, send
                    )
            except BaseException as error:
                return error
        return None  # pragma: no cover

    error = anyio.run(main, backend=backend)
    # As the same task group in the app's own lifespan: its ExceptionGroup.
    assert isinstance(error, BaseExceptionGroup)
    assert [repr(e) for e in error.exceptions] == ["RuntimeError('boom')"]
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.failed"]
    assert events == ["pool down", "app shutdown"]


def test_a_dependency_exits_only_once_a_set_up_that_outlived_a_cancelled_startup_ended():
    events: list[str] = []
    release = threading.Event()

    async def get_pool() -> AsyncGenerator[str]:
        yield "pool"
        events.append("pool down")

    def get_client(pool: Annotated[str, Depends(get_pool, scope="lifespan")]) -> str:
        # In the thread pool: a cancellation can't interrupt it.
        events.append("client started")
        release.wait(MEET_SECONDS)
        events.append("client ended")
        return "client"

    app = FastAPI(concurrent_lifespan_dependencies=True)

    @app.get("/")
    def read(client: Annotated[str, Depends(get_client, scope="lifespan")]) -> None: ...

    async def main() -> None:
        send_stream, receive_stream = anyio.create_memory_object_stream[Any](10)

        async def send(message: Any) -> None: ...

        async def release_once_everything_else_waits() -> None:
            while "client started" not in events:
                await anyio.sleep(0.001)
            scope.cancel()
            # Whatever the cancellation lets run, has run: now the set-up ends.
            await anyio.wait_all_tasks_blocked()
            release.set()

        async with send_stream, receive_stream, anyio.create_task_group() as tg:
            await send_stream.send({"type": "lifespan.startup"})
            tg.start_soon(release_once_everything_else_waits)
            with anyio.CancelScope() as scope:
                await app(
                    {"type": "lifespan", "state": {}}, receive_stream.receive, send
                )

    anyio.run(main)
    assert events == ["client started", "client ended", "pool down"]


def test_a_dependency_exits_after_its_dependents_under_a_native_task_cancel():
    events: list[str] = []
    never = asyncio.Event()

    async def get_pool() -> AsyncGenerator[str]:
        yield "pool"
        events.append("pool down")

    async def get_client(
        pool: Annotated[str, Depends(get_pool, scope="lifespan")],
    ) -> AsyncGenerator[str]:
        yield "client"
        events.append("client down started")
        try:
            await never.wait()
        finally:
            events.append("client down ended")

    app = FastAPI(concurrent_lifespan_dependencies=True)

    @app.get("/")
    def read(client: Annotated[str, Depends(get_client, scope="lifespan")]) -> None: ...

    async def main() -> None:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        sent: list[str] = []

        async def send(message: Any) -> None:
            sent.append(message["type"])

        task = asyncio.create_task(
            app({"type": "lifespan", "state": {}}, queue.get, send)
        )
        await queue.put({"type": "lifespan.startup"})
        while not sent:
            await asyncio.sleep(0.001)
        await queue.put({"type": "lifespan.shutdown"})
        while "client down started" not in events:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert events == ["client down started", "client down ended", "pool down"]


@pytest.mark.parametrize("concurrent", [False, True])
def test_a_set_up_sees_the_context_variables_of_what_it_declares(concurrent: bool):
    variable_a: ContextVar[str] = ContextVar("a", default="unset")
    variable_b: ContextVar[str] = ContextVar("b", default="unset")

    async def get_a() -> str:
        await anyio.sleep(0)
        variable_a.set("a")
        return "a"

    async def get_b() -> AsyncGenerator[str]:
        await anyio.sleep(0)
        variable_b.set("b")
        yield "b"

    async def get_x(a: Annotated[str, Depends(get_a, scope="lifespan")]) -> str:
        return variable_a.get()

    def get_y(b: Annotated[str, Depends(get_b, scope="lifespan")]) -> str:
        return variable_b.get()

    app = FastAPI(concurrent_lifespan_dependencies=concurrent)

    @app.get("/")
    def read(
        x: Annotated[str, Depends(get_x, scope="lifespan")],
        y: Annotated[str, Depends(get_y, scope="lifespan")],
    ) -> list[str]:
        return [x, y]

    with TestClient(app) as client:
        assert client.get("/").json() == ["a", "b"]


def test_a_sync_generator_whose_thread_had_not_started_when_cancelled_never_enters():
    # A task cancelled natively may leave its set-up's job queued in the thread
    # pool: its teardown, run first, makes that job do nothing.
    entered: list[str] = []

    @contextmanager
    def get_settings() -> Iterator[str]:
        entered.append("settings")
        yield "settings"

    sync_generator = lifespan_startup.SyncGenerator(get_settings())
    anyio.run(sync_generator.__aexit__, None, None, None)

    assert sync_generator._enter() is None
    assert entered == []


@pytest.mark.parametrize("concurrent", [False, True])
def test_a_sync_teardown_ends_before_its_dependencies_exit_under_a_native_task_cancel(
    concurrent: bool,
):
    events: list[str] = []
    lifespan_task: asyncio.Task[None] | None = None

    async def get_pool() -> AsyncGenerator[str]:
        yield "pool"
        events.append("pool down")

    def get_client(
        pool: Annotated[str, Depends(get_pool, scope="lifespan")],
    ) -> Iterator[str]:
        yield "client"
        assert lifespan_task is not None
        anyio.from_thread.run_sync(lifespan_task.cancel)
        # A round trip through the event loop: the task has had its cancellation.
        anyio.from_thread.run(anyio.sleep, 0)
        events.append("client down ended")

    app = FastAPI(concurrent_lifespan_dependencies=concurrent)

    @app.get("/")
    def read(client: Annotated[str, Depends(get_client, scope="lifespan")]) -> None: ...

    async def main() -> None:
        nonlocal lifespan_task
        queue: asyncio.Queue[Any] = asyncio.Queue()
        sent: list[str] = []

        async def send(message: Any) -> None:
            sent.append(message["type"])

        lifespan_task = asyncio.create_task(
            app({"type": "lifespan", "state": {}}, queue.get, send)
        )
        await queue.put({"type": "lifespan.startup"})
        while not sent:
            await asyncio.sleep(0.001)
        await queue.put({"type": "lifespan.shutdown"})
        with pytest.raises(asyncio.CancelledError):
            await lifespan_task

    asyncio.run(main())
    assert events == ["client down ended", "pool down"]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_teardown_error_in_a_cancelled_startup_is_logged_and_the_cancellation_kept(
    backend: str, caplog: pytest.LogCaptureFixture
):
    scopes: list[anyio.CancelScope] = []

    async def get_pool() -> AsyncGenerator[str]:
        yield "pool"
        raise RuntimeError("pool teardown failed")

    async def get_cache(pool: Annotated[str, Depends(get_pool, scope="lifespan")]):
        # The server's own cancel scope around the lifespan, cancelled mid-set-up.
        scopes[0].cancel()
        await anyio.sleep(0)

    app = FastAPI()

    @app.get("/")
    def read(cache: Annotated[None, Depends(get_cache, scope="lifespan")]) -> None:
        pass  # pragma: no cover

    async def main() -> None:
        send_stream, receive_stream = anyio.create_memory_object_stream[Any](10)

        async def send(message: Any) -> None:
            pass  # pragma: no cover

        async with send_stream, receive_stream:
            await send_stream.send({"type": "lifespan.startup"})
            with anyio.CancelScope() as cancel_scope:
                scopes.append(cancel_scope)
                await app(
                    {"type": "lifespan", "state": {}}, receive_stream.receive, send
                )
        # The cancellation went on to the scope that asked for it.
        assert cancel_scope.cancelled_caught

    with caplog.at_level(logging.ERROR, logger="fastapi"):
        anyio.run(main, backend=backend)
    assert [r.exc_info[1].args for r in caplog.records if r.exc_info] == [
        ("pool teardown failed",)
    ]


def test_a_set_up_that_ends_after_the_startup_failed_is_torn_down_and_the_failure_raised(
    caplog: pytest.LogCaptureFixture,
):
    events: list[str] = []
    broken = threading.Event()
    # Its thread has started: it is set up even when the startup fails first.
    settings_started = threading.Event()

    def get_broken() -> str:
        try:
            assert settings_started.wait(MEET_SECONDS)
            raise SetupError("cannot connect")
        finally:
            broken.set()

    def get_settings() -> Iterator[str]:
        settings_started.set()
        assert broken.wait(MEET_SECONDS)
        # Round trips through the event loop until the startup has seen the failure
        # (and cancelled this set-up, which goes on in its thread).
        for _ in range(10_000):  # pragma: no branch
            if any("get_broken set up: failed" in r.message for r in caplog.records):
                break
            anyio.from_thread.run(anyio.sleep, 0)
        events.append("settings up")
        yield "settings"
        events.append("settings down")

    app = FastAPI(concurrent_lifespan_dependencies=True)

    @app.get("/")
    def read(
        broken: Annotated[str, Depends(get_broken, scope="lifespan")],
        settings: Annotated[str, Depends(get_settings, scope="lifespan")],
    ) -> None:
        pass  # pragma: no cover

    with caplog.at_level(logging.DEBUG, logger="fastapi"):
        with pytest.raises(SetupError, match="cannot connect"):
            with TestClient(app):
                pass  # pragma: no cover
    assert events == ["settings up", "settings down"]
