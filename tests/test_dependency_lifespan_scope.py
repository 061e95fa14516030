import warnings
from contextlib import asynccontextmanager, nullcontext, suppress
from functools import partial
from typing import Annotated, Any

import anyio
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request, params
from fastapi.exceptions import DependencyScopeError, FastAPIError
from fastapi.testclient import TestClient


class Pool:
    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.open = True


class SetUpError(Exception):
    pass


def make_pool(events: list[str]):
    async def get_pool():
        pool = Pool(events)
        events.append("pool up")
        yield pool
        pool.open = False
        events.append("pool down")

    return get_pool


async def run_lifespan(
    app: Any, scope: dict[str, Any] | None = None, last: str = "lifespan.shutdown"
) -> tuple[list[str], BaseException | None]:
    """The messages the app sends for a startup and a shutdown, and its error."""
    sent: list[str] = []
    messages = [{"type": "lifespan.startup"}, {"type": last}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    error: BaseException | None = None
    try:
        await app(scope or {"type": "lifespan", "state": {}}, receive, send)
    except BaseException as exc:
        error = exc
    return sent, error


def test_set_up_once_and_shared_everywhere_it_is_declared():
    events: list[str] = []
    get_pool = make_pool(events)
    PoolDep = Annotated[Pool, Depends(get_pool, scope="lifespan")]

    def get_session(pool: PoolDep) -> Pool:
        return pool

    app = FastAPI()
    router = APIRouter()

    @app.get("/app")
    def read_app(pool: PoolDep, session: Annotated[Pool, Depends(get_session)]) -> int:
        assert session is pool and pool.open
        return id(pool)

    @router.get("/router", dependencies=[Depends(get_pool, scope="lifespan")])
    def read_router(pool: PoolDep) -> int:
        return id(pool)

    app.include_router(router, dependencies=[Depends(get_pool, scope="lifespan")])
    mounted = APIRouter()

    @mounted.get("/mounted")
    def read_mounted(pool: PoolDep) -> int:
        return id(pool)

    app.mount("/api", mounted)
    runs = []
    for _ in range(2):
        with TestClient(app) as client:
            ids = {client.get(path).json() for path in ("/app", "/router") * 2}
            ids.add(client.get("/api/mounted").json())
            assert len(ids) == 1
            runs.append(ids.pop())
        assert events[-2:] == ["pool up", "pool down"]
    assert events == ["pool up", "pool down"] * 2
    assert runs[0] != runs[1]


def test_every_kind_of_dependency_is_set_up():
    calls: list[str] = []

    def sync_generator():
        calls.append("sync generator")
        yield "sync generator"
        calls.append("sync generator down")

    def sync_function() -> str:
        calls.append("sync function")
        return "sync function"

    async def async_function() -> str:
        calls.append("async function")
        return "async function"

    class Client:
        def __init__(self) -> None:
            calls.append("class")

    def configured(name: str) -> str:
        calls.append(name)
        return name

    app = FastAPI(dependencies=[Depends(Client, scope="lifespan")])

    @app.get("/")
    def read(
        a: Annotated[str, Depends(sync_generator, scope="lifespan")],
        b: Annotated[str, Depends(sync_function, scope="lifespan")],
        c: Annotated[str, Depends(async_function, scope="lifespan")],
        d: Annotated[str, Depends(partial(configured, "partial"), scope="lifespan")],
    ) -> list[str]:
        return [a, b, c, d]

    with TestClient(app) as client:
        for _ in range(2):
            assert client.get("/").json() == [
                "sync generator",
                "sync function",
                "async function",
                "partial",
            ]
    # Once each (their order is the subject of the next test).
    assert sorted(calls[:-1]) == [
        "async function",
        "class",
        "partial",
        "sync function",
        "sync generator",
    ]
    assert calls[-1] == "sync generator down"


def test_order_and_unscoped_sub_dependencies():
    events: list[str] = []

    def get_settings():
        events.append("settings up")
        yield "settings"
        events.append("settings down")

    def get_engine(
        settings: Annotated[str, Depends(get_settings)],
        again: Annotated[str, Depends(get_settings)],
        fresh: Annotated[str, Depends(get_settings, use_cache=False)],
    ):
        events.append("engine up")
        yield "engine"
        events.append("engine down")

    def get_client(
        engine: Annotated[str, Depends(get_engine, scope="lifespan")],
        settings: Annotated[str, Depends(get_settings)],
    ):
        events.append("client up")
        yield "client"
        events.append("client down")

    # Declared before what it needs: set up after it all the same.
    app = FastAPI(dependencies=[Depends(get_client, scope="lifespan")])

    @app.get("/")
    def read(engine: Annotated[str, Depends(get_engine, scope="lifespan")]) -> str:
        return engine

    with TestClient(app) as client:
        assert client.get("/").json() == "engine"
    # The startup caches as one request does; teardown is the reverse order.
    assert events == [
        "settings up",
        "settings up",
        "engine up",
        "client up",
        "client down",
        "engine down",
        "settings down",
        "settings down",
    ]


def needs_query(q: str): ...


def needs_request(request: Request) -> None: ...


def per_request() -> None: ...


def middle(value: Annotated[str, Depends(needs_query)]) -> None: ...


def needs_query_and_more(q: str, value: Annotated[None, Depends(per_request)]): ...


@pytest.mark.parametrize(
    ("dependency", "message"),
    [
        (needs_query, 'needs the query parameter "q" (through needs_query)'),
        (needs_request, 'needs the parameter "request" (request) (through'),
        (
            needs_query_and_more,
            'needs the query parameter "q" (through needs_query_and_more)',
        ),
        (
            middle,
            'needs the query parameter "q" (through middle -> value=needs_query)',
        ),
    ],
)
def test_request_data_is_rejected_when_declared(dependency: Any, message: str):
    app = FastAPI()
    with pytest.raises(DependencyScopeError) as exc:

        @app.get("/")
        def read(value: Annotated[Any, Depends(dependency, scope="lifespan")]): ...

    assert message in str(exc.value)


def test_request_scoped_sub_dependency_is_rejected():
    def get_pool(conn: Annotated[None, Depends(per_request, scope="request")]): ...

    with pytest.raises(DependencyScopeError) as exc:

        @APIRouter().websocket("/")
        async def read(pool: Annotated[None, Depends(get_pool, scope="lifespan")]): ...

    assert str(exc.value) == (
        'The dependency "get_pool" has scope "lifespan": it is set up once when the '
        "application starts, outside of any request, but it depends on "
        '"per_request" with scope "request" (through get_pool -> '
        'conn=per_request). Remove that need, or use scope "request".'
    )


def test_unknown_scope_warns_at_the_line_that_declares_it():
    with pytest.warns(UserWarning, match="'function', 'request', 'lifespan'") as w:
        Depends(per_request, scope="Request")  # type: ignore[arg-type]  # ty: ignore[invalid-argument-type]
        params.Depends(per_request, scope="Request")  # type: ignore[arg-type]  # ty: ignore[invalid-argument-type]
    assert [warning.filename for warning in w] == [__file__, __file__]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        depends = Depends(scope="Request")  # type: ignore[arg-type]  # ty: ignore[invalid-argument-type]
        app = FastAPI()

        @app.get("/")
        def read(pool: Annotated[Pool, depends]) -> None: ...

    # Once, where it is written; not again when FastAPI infers the dependency.
    assert len(caught) == 1


@pytest.mark.parametrize(
    "options", [{"max_concurrency": 2}, {"use_cache": False}], ids=str
)
def test_options_without_meaning_for_a_single_instance_are_rejected(options: Any):
    with pytest.raises(ValueError, match="cannot be combined with scope='lifespan'"):
        Depends(per_request, scope="lifespan", **options)


def test_overrides_in_effect_at_startup_are_set_up_instead():
    events: list[str] = []

    def get_real(): ...

    def get_request_thing(pool: Annotated[Pool, Depends(make_pool(events))]): ...

    get_pool = make_pool(events)

    def get_replacement(
        pool: Annotated[Pool, Depends(get_pool, scope="lifespan")],
    ) -> str:
        return "replacement"

    app = FastAPI()

    @app.get("/")
    def read(
        real: Annotated[str, Depends(get_real, scope="lifespan")],
        thing: Annotated[str, Depends(get_request_thing)],
    ) -> list[str]:
        return [real, thing]

    app.dependency_overrides[get_real] = lambda: "fake"
    app.dependency_overrides[get_request_thing] = get_replacement
    with TestClient(app) as client:
        assert client.get("/").json() == ["fake", "replacement"]
        # The pool the replacement needs was set up at startup, not per request.
        assert events == ["pool up"]
    assert events == ["pool up", "pool down"]


def test_replacement_needing_request_data_fails_the_startup():
    def get_real(): ...

    def get_fake(value: Annotated[str, Depends(middle)]): ...

    app = FastAPI()

    @app.get("/")
    def read(real: Annotated[str, Depends(get_real, scope="lifespan")]) -> None: ...

    app.dependency_overrides[get_real] = get_fake
    with pytest.raises(DependencyScopeError) as exc, TestClient(app):
        ...
    assert (
        'needs the query parameter "q" (through get_fake (overriding get_real) -> '
        "value=middle -> value=needs_query)"
    ) in str(exc.value)


def test_each_route_gets_what_its_own_overrides_resolve_to():
    def get_real() -> str:
        return "real"

    app = FastAPI()
    mounted = APIRouter()

    @app.get("/")
    @mounted.get("/")
    def read(value: Annotated[str, Depends(get_real, scope="lifespan")]) -> str:
        return value

    app.mount("/api", mounted)
    app.dependency_overrides[get_real] = lambda: "fake"
    with TestClient(app) as client:
        # A router mounted with mount() doesn't follow the app's overrides.
        assert client.get("/").json() == "fake"
        assert client.get("/api/").json() == "real"
        # Overrides apply when the lifespan starts: never a stale value.
        app.dependency_overrides.clear()
        with pytest.raises(FastAPIError, match='"get_real" was not set up for this'):
            client.get("/")
        assert client.get("/api/").json() == "real"
    with TestClient(app) as client:
        assert client.get("/").json() == "real"


def test_request_without_the_lifespan_fails_clearly():
    app = FastAPI()

    @app.get("/")
    def read(pool: Annotated[Pool, Depends(make_pool([]), scope="lifespan")]): ...

    with pytest.raises(FastAPIError, match='"get_pool" is not available: the app'):
        TestClient(app).get("/")


def app_lifespan(events: list[str], *, catches: bool):
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        events.append("app startup")
        # A common pattern: log what fails while the app runs, and go on.
        with suppress(Exception) if catches else nullcontext():
            yield
        events.append("app shutdown")

    return lifespan


@pytest.mark.parametrize("catches", [False, True])
def test_set_up_failure_fails_the_startup_and_unwinds_the_app(catches: bool):
    events: list[str] = []
    get_pool = make_pool(events)

    async def get_client(pool: Annotated[Pool, Depends(get_pool, scope="lifespan")]):
        raise SetUpError("cannot connect")

    app = FastAPI(lifespan=app_lifespan(events, catches=catches))

    @app.get("/")
    def read(client: Annotated[None, Depends(get_client, scope="lifespan")]): ...

    with pytest.raises(SetUpError, match="cannot connect") as exc, TestClient(app):
        ...
    assert exc.value.__notes__ == [
        'while setting up the lifespan-scoped dependency "get_client"'
    ]
    # The app's own lifespan sees a normal exit, whatever it does with errors.
    run = ["app startup", "pool up", "pool down", "app shutdown"]
    assert events == run
    sent, error = anyio.run(run_lifespan, app)
    assert sent == ["lifespan.startup.failed"]
    assert isinstance(error, SetUpError)
    assert events == run * 2


class TeardownError(Exception):
    pass


@pytest.mark.parametrize("error", [TeardownError("boom"), KeyboardInterrupt()])
def test_every_teardown_and_the_app_shutdown_run_when_teardowns_fail(
    error: BaseException,
):
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        events.append("app shutdown")
        raise RuntimeError("app shutdown failed")

    async def one():
        yield "one"
        events.append("one down")

    async def two(one: Annotated[str, Depends(one, scope="lifespan")]):
        yield "two"
        events.append("two down")
        raise error

    async def six(two: Annotated[str, Depends(two, scope="lifespan")]):
        yield "six"
        events.append("six down")
        raise SetUpError()

    app = FastAPI(lifespan=lifespan)

    @app.get("/")
    def read(six: Annotated[str, Depends(six, scope="lifespan")]) -> None: ...

    with pytest.raises(SetUpError) as exc:
        with TestClient(app):
            pass
    assert events == ["six down", "two down", "one down", "app shutdown"]
    assert exc.value.__notes__ == [
        'while tearing down the lifespan-scoped dependency "six"',
        f"Another lifespan dependency teardown failed: {error!r}",
        "The app's shutdown failed: RuntimeError('app shutdown failed')",
    ]
    sent, _ = anyio.run(run_lifespan, app)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.failed"]


class ServerGone(Exception):
    pass


@pytest.mark.parametrize("when", ["startup", "running"])
def test_what_was_set_up_is_torn_down_when_the_server_goes_away(when: str):
    events: list[str] = []
    app = FastAPI(lifespan=app_lifespan(events, catches=False))

    @app.get("/")
    def read(pool: Annotated[Pool, Depends(make_pool(events), scope="lifespan")]): ...

    async def receive() -> dict[str, Any]:
        if not events:
            return {"type": "lifespan.startup"}
        raise ServerGone()

    async def send(message: dict[str, Any]) -> None:
        if when == "startup":
            raise ServerGone()

    with pytest.raises(ServerGone):
        anyio.run(app, {"type": "lifespan", "state": {}}, receive, send)
    # The error is the server's: it reaches the app's lifespan, as upstream does.
    assert events == ["app startup", "pool up", "pool down"]


def test_a_server_without_lifespan_state_fails_the_startup():
    app = FastAPI()

    @app.get("/")
    def read(pool: Annotated[Pool, Depends(make_pool([]), scope="lifespan")]): ...

    sent, error = anyio.run(run_lifespan, app, {"type": "lifespan"})
    assert sent == ["lifespan.startup.failed"]
    assert "does not support lifespan state" in str(error)


def test_any_message_after_the_startup_ends_the_run():
    events: list[str] = []
    app = FastAPI(dependencies=[Depends(make_pool(events), scope="lifespan")])
    sent, error = anyio.run(run_lifespan, app, None, "lifespan.unknown")
    assert sent[0] == "lifespan.startup.complete"
    assert error is None
    assert events == ["pool up", "pool down"]


def test_a_generator_that_does_not_yield_is_named():
    async def get_pool():
        if False:
            yield

    app = FastAPI(dependencies=[Depends(get_pool, scope="lifespan")])
    with pytest.raises(RuntimeError, match="generator didn't yield") as exc:
        with TestClient(app):
            ...
    assert exc.value.__notes__ == [
        'while setting up the lifespan-scoped dependency "get_pool"'
    ]
