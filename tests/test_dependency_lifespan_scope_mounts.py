from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, FastAPI
from fastapi.testclient import TestClient
from starlette.routing import Mount, Router


class Resource:
    def __init__(self, name: str, events: list[str]) -> None:
        self.name = name
        self.events = events
        self.open = True
        events.append(f"{name} up")

    def close(self) -> None:
        self.open = False
        self.events.append(f"{self.name} down")


@asynccontextmanager
async def run_lifespan(app: FastAPI) -> Any:
    """Run an app's ASGI lifespan as a server would; yield the state it filled."""
    state: dict[str, Any] = {}
    send_stream, receive_stream = anyio.create_memory_object_stream[Any](10)
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async with send_stream, receive_stream, anyio.create_task_group() as tg:
        tg.start_soon(
            app, {"type": "lifespan", "state": state}, receive_stream.receive, send
        )
        await send_stream.send({"type": "lifespan.startup"})
        while not sent:
            await anyio.sleep(0.01)
        assert sent[0] == {"type": "lifespan.startup.complete"}
        yield state
        await send_stream.send({"type": "lifespan.shutdown"})


def make_sub_app(name: str, events: list[str]) -> FastAPI:
    def get_resource():
        resource = Resource(name, events)
        yield resource
        resource.close()

    sub_app = FastAPI()

    @sub_app.get("/")
    def read(
        resource: Annotated[Resource, Depends(get_resource, scope="lifespan")],
    ) -> dict[str, Any]:
        return {"name": resource.name, "open": resource.open}

    return sub_app


def test_forwarded_sub_apps_keep_their_values_through_a_plain_dict_merge():
    events: list[str] = []
    first, second = make_sub_app("first", events), make_sub_app("second", events)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with run_lifespan(first) as state1, run_lifespan(second) as state2:
            yield {**state1, **state2}

    app = FastAPI(lifespan=lifespan)
    app.mount("/first", first)
    app.mount("/second", second)
    with TestClient(app) as client:
        assert client.get("/first/").json() == {"name": "first", "open": True}
        assert client.get("/second/").json() == {"name": "second", "open": True}
    assert sorted(events) == ["first down", "first up", "second down", "second up"]


def make_pool_dependency(events: list[str]) -> Any:
    def get_pool():
        pool = Resource("pool", events)
        yield pool
        pool.close()

    return get_pool


def test_router_mounted_with_mount_belongs_to_the_app_run():
    events: list[str] = []
    get_pool = make_pool_dependency(events)
    router = APIRouter()

    @router.get("/items")
    def read(pool: Annotated[Resource, Depends(get_pool, scope="lifespan")]) -> bool:
        return pool.open

    nested = Router(routes=[Mount("/api", app=router)])
    app = FastAPI()
    app.mount("/v1", router)
    app.mount("/v2", nested)
    with TestClient(app) as client:
        assert client.get("/v1/items").json() is True
        assert client.get("/v2/api/items").json() is True
        assert events == ["pool up"]
    assert events == ["pool up", "pool down"]


def test_router_mounted_with_mount_follows_its_own_overrides_at_startup():
    # The path operations of a router mounted with mount() don't follow the
    # app's dependency_overrides in requests (the router has no overrides
    # provider): the startup sets up what those requests need, the original.
    events: list[str] = []
    get_pool = make_pool_dependency(events)

    def get_settings(
        pool: Annotated[Resource, Depends(get_pool, scope="lifespan", use_cache=False)],
    ) -> str:
        return "real settings"

    def fake_settings() -> str:
        return "fake settings"  # pragma: no cover

    router = APIRouter()

    @router.get("/items")
    def read(settings: Annotated[str, Depends(get_settings)]) -> str:
        return settings

    app = FastAPI()
    app.mount("/api", router)
    app.dependency_overrides[get_settings] = fake_settings
    with TestClient(app) as client:
        assert client.get("/api/items").json() == "real settings"
        assert events == ["pool up"]
    assert events == ["pool up", "pool down"]


def test_lifespan_dependency_found_after_a_router_included_twice():
    events: list[str] = []
    get_pool = make_pool_dependency(events)
    plain = APIRouter()

    @plain.get("/plain")
    def read_plain() -> str:
        return "plain"

    pooled = APIRouter()

    @pooled.get("/pool")
    def read_pool(
        pool: Annotated[Resource, Depends(get_pool, scope="lifespan")],
    ) -> bool:
        return pool.open

    app = FastAPI()
    app.include_router(plain, prefix="/a")
    app.include_router(plain, prefix="/b")
    app.include_router(pooled)
    with TestClient(app) as client:
        assert client.get("/b/plain").json() == "plain"
        assert client.get("/pool").json() is True
    assert events == ["pool up", "pool down"]


def test_router_mounted_in_an_included_router_belongs_to_the_app_run():
    events: list[str] = []
    get_pool = make_pool_dependency(events)
    inner = APIRouter()

    @inner.get("/items")
    def read(pool: Annotated[Resource, Depends(get_pool, scope="lifespan")]) -> bool:
        return pool.open

    outer = APIRouter()
    outer.mount("/inner", inner)
    app = FastAPI()
    app.include_router(outer, prefix="/outer")
    with TestClient(app) as client:
        assert client.get("/outer/inner/items").json() is True
    assert events == ["pool up", "pool down"]


def test_declared_in_app_dependencies_without_routes_is_set_up():
    events: list[str] = []
    app = FastAPI(
        dependencies=[Depends(make_pool_dependency(events), scope="lifespan")]
    )
    with TestClient(app):
        assert events == ["pool up"]
    assert events == ["pool up", "pool down"]


def test_declared_in_included_router_dependencies_without_routes_is_set_up():
    events: list[str] = []
    listed = make_pool_dependency(events)

    def at_include():
        events.append("include up")
        yield
        events.append("include down")

    inner = APIRouter(dependencies=[Depends(listed, scope="lifespan")])
    outer = APIRouter()
    outer.include_router(inner)
    app = FastAPI()
    app.include_router(outer, dependencies=[Depends(at_include, scope="lifespan")])
    with TestClient(app):
        assert sorted(events) == ["include up", "pool up"]
    assert sorted(events[2:]) == ["include down", "pool down"]


def test_router_subclass_lifespan_is_called_whatever_other_apps_declare():
    calls: list[str] = []

    class LoggingRouter(APIRouter):
        async def lifespan(self, scope: Any, receive: Any, send: Any) -> None:
            calls.append("lifespan")
            await super().lifespan(scope, receive, send)

    other = FastAPI()

    @other.get("/")
    def read(value: Annotated[str, Depends(lambda: "x", scope="lifespan")]) -> str:
        return value  # pragma: no cover

    app = FastAPI()
    app.router.__class__ = LoggingRouter
    with TestClient(app):
        pass
    assert calls == ["lifespan"]

    with_dependency = FastAPI()
    with_dependency.router.__class__ = LoggingRouter

    @with_dependency.get("/")
    def read_value(
        value: Annotated[str, Depends(lambda: "x", scope="lifespan")],
    ) -> str:
        return value

    with TestClient(with_dependency) as client:
        assert client.get("/").json() == "x"
    assert calls == ["lifespan", "lifespan"]
