import logging
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio
import pytest
from fastapi import APIRouter, Depends, FastAPI
from fastapi.exceptions import DependencyScopeError, FastAPIError
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.routing import Mount


def test_overrides_in_effect_at_startup_are_honoured():
    events: list[str] = []

    def get_real() -> str:
        events.append("real")  # pragma: no cover
        return "real"  # pragma: no cover

    def get_fake():
        events.append("fake up")
        yield "fake"
        events.append("fake down")

    app = FastAPI()

    @app.get("/")
    def read(value: Annotated[str, Depends(get_real, scope="lifespan")]) -> str:
        return value

    app.dependency_overrides[get_real] = get_fake
    with TestClient(app) as client:
        assert client.get("/").json() == "fake"
    assert events == ["fake up", "fake down"]


def test_replacement_declaring_lifespan_dependencies_gets_them():
    events: list[str] = []

    def only_original_needs() -> str:
        events.append("original's")  # pragma: no cover
        return "original's"  # pragma: no cover

    def replacement_needs() -> str:
        events.append("replacement's")
        return "replacement's"

    def original(
        value: Annotated[str, Depends(only_original_needs, scope="lifespan")],
    ) -> str:
        return value  # pragma: no cover

    def replacement(
        value: Annotated[str, Depends(replacement_needs, scope="lifespan")],
    ) -> str:
        return value

    app = FastAPI()

    @app.get("/")
    def read(value: Annotated[str, Depends(original)]) -> str:
        return value

    app.dependency_overrides[original] = replacement
    with TestClient(app) as client:
        assert client.get("/").json() == "replacement's"
    assert events == ["replacement's"]


def test_override_added_while_running_fails_clearly():
    def needed_later() -> str:
        return "later"  # pragma: no cover

    def original() -> str:
        return "original"

    def replacement(
        value: Annotated[str, Depends(needed_later, scope="lifespan")],
    ) -> str:
        return value  # pragma: no cover

    app = FastAPI(dependencies=[Depends(lambda: None, scope="lifespan")])

    @app.get("/")
    def read(value: Annotated[str, Depends(original)]) -> str:
        return value

    with TestClient(app) as client:
        assert client.get("/").json() == "original"
        app.dependency_overrides[original] = replacement
        with pytest.raises(FastAPIError, match='"needed_later" was not set up'):
            client.get("/")


def test_replacement_needing_request_data_fails_startup():
    def get_real() -> str:
        return "real"  # pragma: no cover

    def get_fake(q: str) -> str:
        return q  # pragma: no cover

    app = FastAPI()

    @app.get("/")
    def read(value: Annotated[str, Depends(get_real, scope="lifespan")]) -> str:
        return value  # pragma: no cover

    app.dependency_overrides[get_real] = get_fake
    with pytest.raises(
        DependencyScopeError,
        match=r'"get_fake \(overriding get_real\)" has scope "lifespan".* needs the '
        r'query parameter "q" \(through get_fake \(overriding get_real\)\)',
    ):
        with TestClient(app):
            pass  # pragma: no cover


def test_composition_with_user_lifespan_and_state():
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        events.append("app startup")
        yield {"config": "from lifespan"}
        events.append("app shutdown")

    def get_resource():
        events.append("resource up")
        yield "resource"
        events.append("resource down")

    app = FastAPI(lifespan=lifespan)

    @app.get("/")
    def read(
        value: Annotated[str, Depends(get_resource, scope="lifespan")],
    ) -> dict[str, Any]:
        return {"value": value}

    with TestClient(app) as client:
        assert client.get("/").json() == {"value": "resource"}
        assert client.app_state["config"] == "from lifespan"
    assert events == [
        "app startup",
        "resource up",
        "resource down",
        "app shutdown",
    ]


def app_failing_after(first: Any) -> FastAPI:
    """
    An app whose second lifespan dependency fails to set up, after `first`: it
    needs it, so also when they are set up concurrently.
    """

    def cannot_connect(a: Annotated[str, Depends(first, scope="lifespan")]) -> str:
        raise RuntimeError("cannot connect")

    app = FastAPI()

    @app.get("/")
    def read(
        a: Annotated[str, Depends(first, scope="lifespan")],
        b: Annotated[str, Depends(cannot_connect, scope="lifespan")],
    ) -> None:
        pass  # pragma: no cover

    return app


def test_startup_failure_tears_down_what_was_set_up():
    events: list[str] = []

    def first():
        events.append("first up")
        yield "first"
        events.append("first down")

    with pytest.raises(RuntimeError, match="cannot connect"):
        with TestClient(app_failing_after(first)):
            pass  # pragma: no cover
    assert events == ["first up", "first down"]


def test_teardown_failures_run_every_teardown(caplog: pytest.LogCaptureFixture):
    events: list[str] = []

    def make(name: str, fail: bool, needs: Any):
        def dependency(previous: Any = Depends(needs, scope="lifespan")):
            events.append(f"{name} up")
            yield name
            events.append(f"{name} down")
            if fail:
                raise RuntimeError(f"{name} failed")

        dependency.__name__ = name
        return dependency

    def one():
        events.append("one up")
        yield "one"
        events.append("one down")

    # Each needs the one before: one order, however they are set up.
    two = make("two", True, needs=one)
    three = make("three", True, needs=two)
    app = FastAPI()

    @app.get("/")
    def read(
        a: Annotated[str, Depends(one, scope="lifespan")],
        b: Annotated[str, Depends(two, scope="lifespan")],
        c: Annotated[str, Depends(three, scope="lifespan")],
    ) -> None:
        pass  # pragma: no cover

    with caplog.at_level(logging.ERROR, logger="fastapi"):
        with pytest.raises(RuntimeError, match="three failed") as exc:
            with TestClient(app):
                pass
    assert events == [
        "one up",
        "two up",
        "three up",
        "three down",
        "two down",
        "one down",
    ]
    assert exc.value.__notes__ == [
        'while tearing down the lifespan-scoped dependency "three"',
        "Another lifespan dependency teardown failed: RuntimeError('two failed')",
    ]
    assert "Lifespan dependency teardown failed" in caplog.text


def run_lifespan_without_state(
    app: Any, results: list[Any], release: anyio.Event | None = None
) -> Any:
    """
    Drive the ASGI lifespan like a server without lifespan state support: the
    first message sent back, then (if started) the response to GET /, then any
    error the app raised.
    """

    async def run() -> None:
        send_stream, receive_stream = anyio.create_memory_object_stream[Any](10)
        sent: list[Any] = []
        errors: list[Exception] = []

        async def send(message: Any) -> None:
            sent.append(message)

        async def serve() -> None:
            try:
                await app(
                    {"type": "lifespan", "asgi": {"version": "3.0"}},
                    receive_stream.receive,
                    send,
                )
            except FastAPIError as error:
                errors.append(error)

        async with send_stream, receive_stream, anyio.create_task_group() as tg:
            tg.start_soon(serve)
            await send_stream.send({"type": "lifespan.startup"})
            while not sent:
                await anyio.sleep(0.01)
            results.append(sent[0])
            if sent[0]["type"] == "lifespan.startup.complete":
                results.append(TestClient(app).get("/").json())
                if release is not None:
                    await release.wait()
                await send_stream.send({"type": "lifespan.shutdown"})
        results.extend(errors)

    return run


def test_server_without_lifespan_state_support():
    def get_value():
        yield "value"

    app = FastAPI()

    @app.get("/")
    def read(value: Annotated[str, Depends(get_value, scope="lifespan")]) -> str:
        return value

    results: list[Any] = []
    anyio.run(run_lifespan_without_state(app, results))
    assert results == [{"type": "lifespan.startup.complete"}, "value"]
    with pytest.raises(FastAPIError, match="is not available"):
        TestClient(app).get("/")


def test_second_run_without_state_support_fails_at_startup():
    bound: list[str] = []

    def bind_port():
        # Stands for a dependency that can't be set up twice (a port, a lock).
        bound.append("bound")
        yield "value"

    app = FastAPI()

    @app.get("/")
    def read(value: Annotated[str, Depends(bind_port, scope="lifespan")]) -> str:
        return value

    first: list[Any] = []
    second: list[Any] = []

    async def both() -> None:
        release = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_lifespan_without_state(app, first, release))
            while len(first) < 2:
                await anyio.sleep(0.01)
            await run_lifespan_without_state(app, second)()
            release.set()

    anyio.run(both)
    assert first[0] == {"type": "lifespan.startup.complete"}
    assert second[0]["type"] == "lifespan.startup.failed"
    assert "another lifespan run of this app is still active" in str(second[1])
    # It failed before setting anything up.
    assert bound == ["bound"]


def test_mounted_app_whose_lifespan_never_runs_fails_the_parent_startup():
    events: list[str] = []

    def get_value():
        events.append("up")
        yield "parent"
        events.append("down")

    sub_app = FastAPI()

    @sub_app.get("/")
    def sub_read(value: Annotated[str, Depends(get_value, scope="lifespan")]) -> str:
        return value  # pragma: no cover

    app = FastAPI()

    @app.get("/")
    def read(value: Annotated[str, Depends(get_value, scope="lifespan")]) -> str:
        return value  # pragma: no cover

    app.mount("/sub", sub_app)
    # Its requests would never get its value (not the parent's either): the
    # parent's startup fails and says why, before it sets anything up.
    with pytest.raises(FastAPIError) as exc:
        with TestClient(app):
            pass  # pragma: no cover
    assert str(exc.value).startswith(
        'The app mounted at "/sub" declares the lifespan-scoped dependency '
        '"get_value", but its lifespan did not run:'
    )
    assert events == []


def test_router_used_as_asgi_app_keeps_upstream_lifespan():
    router = APIRouter()

    @router.get("/")
    def read(value: Annotated[str, Depends(lambda: "x", scope="lifespan")]) -> str:
        return value  # pragma: no cover

    wrapper = Starlette(routes=[Mount("/api", app=router)])
    with TestClient(router) as client:
        assert client.app_state == {}
    with TestClient(wrapper) as client:
        assert client.app_state == {}


def sync_failing_teardown():
    yield "first"
    raise RuntimeError("teardown failed")


async def async_failing_teardown():
    yield "first"
    raise RuntimeError("teardown failed")


@pytest.mark.parametrize("first", [sync_failing_teardown, async_failing_teardown])
def test_startup_failure_keeps_the_original_error_when_teardown_fails(first: Any):
    with pytest.raises(RuntimeError, match="cannot connect") as exc:
        with TestClient(app_failing_after(first)):
            pass  # pragma: no cover
    assert exc.value.__notes__ == [
        'while setting up the lifespan-scoped dependency "cannot_connect"',
        "Another lifespan dependency teardown failed: RuntimeError('teardown failed')",
    ]


def test_runtime_error_in_a_generator_set_up_is_kept_as_is():
    async def cannot_start():
        raise RuntimeError("cannot start")
        yield  # pragma: no cover

    app = FastAPI()

    @app.get("/")
    def read(value: Annotated[None, Depends(cannot_start, scope="lifespan")]) -> None:
        pass  # pragma: no cover

    with pytest.raises(RuntimeError) as exc:
        with TestClient(app):
            pass  # pragma: no cover
    assert str(exc.value) == "cannot start"
    assert exc.value.__cause__ is None


class DriverError(Exception):
    pass


def get_settings() -> str:
    raise DriverError("database does not exist")


async def get_pool(settings: Annotated[str, Depends(get_settings)]):
    yield settings  # pragma: no cover


async def get_repository(
    pool: Annotated[str, Depends(get_pool, scope="lifespan")],
) -> str:
    return pool  # pragma: no cover


def test_set_up_failure_keeps_its_type_and_names_the_dependency():
    app = FastAPI()

    @app.get("/")
    def read(
        repository: Annotated[str, Depends(get_repository, scope="lifespan")],
    ) -> None:
        pass  # pragma: no cover

    with pytest.raises(DriverError, match="database does not exist") as exc:
        with TestClient(app):
            pass  # pragma: no cover
    # Only the lifespan dependency that failed, not those that need it.
    assert exc.value.__notes__ == [
        'while setting up the lifespan-scoped dependency "get_pool"'
    ]


def test_set_up_failure_names_the_replacement_that_failed():
    async def get_test_pool():
        raise DriverError("connection refused")
        yield  # pragma: no cover

    app = FastAPI()

    @app.get("/")
    def read(pool: Annotated[str, Depends(get_pool, scope="lifespan")]) -> None:
        pass  # pragma: no cover

    app.dependency_overrides[get_pool] = get_test_pool
    with pytest.raises(DriverError) as exc:
        with TestClient(app):
            pass  # pragma: no cover
    assert exc.value.__notes__ == [
        'while setting up the lifespan-scoped dependency "get_test_pool '
        '(overriding get_pool)"'
    ]


def test_mounted_app_whose_lifespan_is_forwarded_gets_its_own_values():
    events: list[str] = []

    def shared():
        events.append("up")
        yield object()
        events.append("down")

    sub_app = FastAPI()

    @sub_app.get("/")
    def sub_read(value: Annotated[object, Depends(shared, scope="lifespan")]) -> int:
        return id(value)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Forward the lifespan to the mounted app and pass its state on.
        with TestClient(sub_app) as sub_client:
            yield sub_client.app_state

    app = FastAPI(lifespan=lifespan)

    @app.get("/")
    def read(value: Annotated[object, Depends(shared, scope="lifespan")]) -> int:
        return id(value)

    app.mount("/sub", sub_app)
    with TestClient(app) as client:
        parent_value = client.get("/").json()
        sub_value = client.get("/sub/").json()
        assert parent_value != sub_value
        assert client.get("/sub/").json() == sub_value
        assert events == ["up", "up"]
    assert events == ["up", "up", "down", "down"]


def test_cancelled_startup_tears_down_what_was_set_up():
    events: list[str] = []

    def first():
        events.append("first up")
        yield "first"
        events.append("first down")

    async def slow(first: Annotated[str, Depends(first, scope="lifespan")]):
        events.append("slow started")
        await anyio.sleep(30)
        yield "slow"  # pragma: no cover

    app = FastAPI()

    @app.get("/")
    def read(
        a: Annotated[str, Depends(first, scope="lifespan")],
        b: Annotated[str, Depends(slow, scope="lifespan")],
    ) -> None:
        pass  # pragma: no cover

    async def serve_and_stop() -> None:
        send_stream, receive_stream = anyio.create_memory_object_stream[Any](10)
        sent: list[Any] = []

        async def send(message: Any) -> None:
            sent.append(message)

        async with send_stream, receive_stream:
            await send_stream.send({"type": "lifespan.startup"})
            # A server stopped (Ctrl-C) while "slow" is still setting up.
            with anyio.move_on_after(0.5):
                await app(
                    {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                    receive_stream.receive,
                    send,
                )
        assert sent[0]["type"] == "lifespan.startup.failed"

    anyio.run(serve_and_stop)
    assert events == ["first up", "slow started", "first down"]


def test_generator_that_does_not_yield_is_named():
    def no_yield():
        if False:
            yield  # pragma: no cover

    app = FastAPI()

    @app.get("/")
    def read(value: Annotated[None, Depends(no_yield, scope="lifespan")]) -> None:
        pass  # pragma: no cover

    with pytest.raises(RuntimeError) as exc:
        with TestClient(app):
            pass  # pragma: no cover
    assert str(exc.value) == "generator didn't yield"
    assert exc.value.__notes__ == [
        'while setting up the lifespan-scoped dependency "no_yield"'
    ]


def test_generator_that_does_not_stop_is_named():
    async def yields_twice():
        yield "first"
        yield "second"

    app = FastAPI()

    @app.get("/")
    def read(value: Annotated[str, Depends(yields_twice, scope="lifespan")]) -> str:
        return value

    with pytest.raises(RuntimeError) as exc:
        with TestClient(app) as client:
            assert client.get("/").json() == "first"
    assert str(exc.value) == "generator didn't stop"
    assert exc.value.__notes__ == [
        'while tearing down the lifespan-scoped dependency "yields_twice"'
    ]
