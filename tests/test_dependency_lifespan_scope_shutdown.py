import asyncio
import time
from collections.abc import AsyncGenerator, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any

import anyio
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient


class TeardownError(Exception):
    pass


def logging_lifespan(
    events: list[str],
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's own lifespan, with no try/finally around its yield."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncGenerator[None]:
        events.append("app startup")
        yield
        events.append("app shutdown")

    return lifespan


def make_app(events: list[str], failing_teardown: Any) -> FastAPI:
    """
    An app whose own lifespan has no try/finally around its yield, with three
    lifespan dependencies, each needing the one before: the middle one's
    teardown is `failing_teardown`.
    """

    lifespan = logging_lifespan(events)

    def first():
        events.append("first up")
        yield "first"
        events.append("first down")

    def middle(first: Annotated[str, Depends(first, scope="lifespan")]):
        events.append("middle up")
        yield "middle"
        events.append("middle down")
        failing_teardown()

    async def last(middle: Annotated[str, Depends(middle, scope="lifespan")]):
        events.append("last up")
        yield "last"
        events.append("last down")

    app = FastAPI(lifespan=lifespan)

    @app.get("/")
    def read(
        a: Annotated[str, Depends(first, scope="lifespan")],
        b: Annotated[str, Depends(middle, scope="lifespan")],
        c: Annotated[str, Depends(last, scope="lifespan")],
    ) -> list[str]:
        return [a, b, c]

    return app


FULL_RUN = [
    "app startup",
    "first up",
    "middle up",
    "last up",
    "last down",
    "middle down",
    "first down",
    "app shutdown",
]


def raise_runtime_error() -> None:
    raise TeardownError("teardown boom")


def raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


def raise_system_exit() -> None:
    raise SystemExit(3)


def raise_cancelled() -> None:
    raise asyncio.CancelledError()


def test_app_shutdown_runs_when_a_teardown_fails():
    events: list[str] = []
    with pytest.raises(TeardownError, match="teardown boom"):
        with TestClient(make_app(events, raise_runtime_error)) as client:
            assert client.get("/").json() == ["first", "middle", "last"]
    assert events == FULL_RUN


async def run_lifespan(app: FastAPI) -> list[str]:
    """Start and shut down the app's lifespan; the types of the messages sent."""
    sent: list[str] = []
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def receive() -> MutableMapping[str, Any]:
        return messages.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message["type"])

    await app({"type": "lifespan", "state": {}}, receive, send)
    return sent  # pragma: no cover


@pytest.mark.parametrize(
    ("failing_teardown", "expected"),
    [
        (raise_keyboard_interrupt, KeyboardInterrupt),
        (raise_system_exit, SystemExit),
        (raise_cancelled, asyncio.CancelledError),
    ],
)
def test_app_shutdown_runs_when_a_teardown_raises_a_base_exception(
    failing_teardown: Any, expected: type[BaseException]
):
    events: list[str] = []
    app = make_app(events, failing_teardown)

    async def main() -> None:
        with pytest.raises(expected):
            await run_lifespan(app)

    asyncio.run(main())
    assert events == FULL_RUN


def test_teardown_error_and_app_shutdown_error_are_both_kept():
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        raise RuntimeError("app shutdown failed")

    def failing():
        yield "value"
        raise TeardownError("teardown failed")

    app = FastAPI(lifespan=lifespan)

    @app.get("/")
    def read(value: Annotated[str, Depends(failing, scope="lifespan")]) -> None:
        pass  # pragma: no cover

    # The teardown comes first (before the app's own shutdown code).
    with pytest.raises(TeardownError, match="teardown failed") as exc:
        with TestClient(app):
            pass
    assert exc.value.__notes__ == [
        "The app's shutdown failed: RuntimeError('app shutdown failed')"
    ]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_hung_teardown_is_interrupted_by_a_cancel_scope(backend: str):
    events: list[str] = []

    lifespan = logging_lifespan(events)

    def first():
        yield "first"
        events.append("first down")

    async def last(first: Annotated[str, Depends(first, scope="lifespan")]):
        yield "last"
        events.append("last teardown started")
        await anyio.sleep(3)
        events.append("last teardown finished")  # pragma: no cover

    async def hung(last: Annotated[str, Depends(last, scope="lifespan")]):
        yield "hung"
        events.append("hung teardown started")
        await anyio.sleep(3)
        events.append("hung teardown finished")  # pragma: no cover

    app = FastAPI(lifespan=lifespan)

    @app.get("/")
    def read(
        a: Annotated[str, Depends(first, scope="lifespan")],
        b: Annotated[str, Depends(last, scope="lifespan")],
        c: Annotated[str, Depends(hung, scope="lifespan")],
    ) -> None:
        pass  # pragma: no cover

    sent: list[str] = []

    async def main() -> None:
        send_stream, receive_stream = anyio.create_memory_object_stream[Any](10)

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message["type"])

        async with send_stream, receive_stream, anyio.create_task_group() as tg:

            async def serve() -> None:
                await app(
                    {"type": "lifespan", "state": {}}, receive_stream.receive, send
                )

            async def serve_with_deadline() -> None:
                with anyio.CancelScope() as scope:
                    stop.append(scope)
                    await serve()

            stop: list[anyio.CancelScope] = []
            tg.start_soon(serve_with_deadline)
            await send_stream.send({"type": "lifespan.startup"})
            while not sent:
                await anyio.sleep(0.01)
            await send_stream.send({"type": "lifespan.shutdown"})
            # The server's shutdown timeout.
            stop[0].deadline = anyio.current_time() + 0.5

    started = time.monotonic()
    anyio.run(main, backend=backend)
    assert time.monotonic() - started < 2.5
    assert sent[0] == "lifespan.startup.complete"
    assert events == [
        "app startup",
        "hung teardown started",
        "last teardown started",
        "first down",
        "app shutdown",
    ]


class ServerGone(Exception):
    pass


def test_lifespan_ended_while_running_still_tears_everything_down():
    events: list[str] = []

    lifespan = logging_lifespan(events)

    def first():
        yield "first"
        events.append("first down")

    async def failing_last():
        yield "last"
        events.append("failing last down")
        raise TeardownError("teardown boom")

    app = FastAPI(lifespan=lifespan)

    @app.get("/")
    def read(
        a: Annotated[str, Depends(first, scope="lifespan")],
        b: Annotated[str, Depends(failing_last, scope="lifespan")],
    ) -> None:
        pass  # pragma: no cover

    sent: list[str] = []
    received = 0

    async def receive() -> MutableMapping[str, Any]:
        nonlocal received
        received += 1
        if received == 1:
            return {"type": "lifespan.startup"}
        # The server fails (or the task is cancelled) while the app runs.
        raise ServerGone()

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message["type"])

    async def main() -> None:
        with pytest.raises(ServerGone) as exc:
            await app({"type": "lifespan", "state": {}}, receive, send)
        assert exc.value.__notes__ == [
            "Another lifespan dependency teardown failed: "
            "TeardownError('teardown boom')"
        ]

    asyncio.run(main())
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.failed"]
    # The error is then thrown into the app's own lifespan at its `yield`, as
    # upstream does: without try/finally, its shutdown code doesn't run.
    assert events == ["app startup", "failing last down", "first down"]


def test_server_gone_when_startup_completes_still_tears_everything_down():
    events: list[str] = []
    app = make_app(events, raise_runtime_error)

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "lifespan.startup"}

    sent: list[str] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message["type"])
        if message["type"] == "lifespan.startup.complete":
            # The server can't be told that the startup is complete.
            raise ServerGone()

    async def main() -> None:
        with pytest.raises(ServerGone) as exc:
            await app({"type": "lifespan", "state": {}}, receive, send)
        assert exc.value.__notes__ == [
            "Another lifespan dependency teardown failed: "
            "TeardownError('teardown boom')"
        ]

    asyncio.run(main())
    assert sent == ["lifespan.startup.complete", "lifespan.startup.failed"]
    assert events == FULL_RUN[:-1]


def test_lifespan_cancelled_while_running_still_tears_everything_down():
    events: list[str] = []
    app = make_app(events, lambda: None)

    async def main() -> None:
        send_stream, receive_stream = anyio.create_memory_object_stream[Any](10)
        sent: list[str] = []

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message["type"])

        async with send_stream, receive_stream:
            await send_stream.send({"type": "lifespan.startup"})
            with anyio.CancelScope() as scope:

                async def cancel_once_started() -> None:
                    while not sent:
                        await anyio.sleep(0.01)
                    scope.cancel()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(cancel_once_started)
                    await app(
                        {"type": "lifespan", "state": {}}, receive_stream.receive, send
                    )
        assert sent[0] == "lifespan.startup.complete"

    anyio.run(main)
    assert events == FULL_RUN[:-1]
