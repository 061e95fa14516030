import threading
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import FastAPIError
from fastapi.testclient import TestClient


def make_resource(events: list[str]) -> Any:
    def get_resource() -> Iterator[str]:
        events.append("resource up")
        yield "resource"
        events.append("resource down")

    return get_resource


def add_route(app: FastAPI, events: list[str]) -> None:
    Resource = Annotated[str, Depends(make_resource(events), scope="lifespan")]

    @app.get("/")
    def read(resource: Resource, request: Request) -> dict[str, Any]:
        return {"resource": resource, "config": getattr(request.state, "config", None)}


def test_async_generator_lifespan_runs_around_the_dependencies():
    events: list[str] = []

    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, str]]:
        events.append("app startup")
        yield {"config": "ready"}
        events.append("app shutdown")

    app = FastAPI(lifespan=lifespan)  # type: ignore[arg-type]  # ty: ignore[invalid-argument-type]
    add_route(app, events)
    with TestClient(app) as client:
        assert client.get("/").json() == {"resource": "resource", "config": "ready"}
    assert events == ["app startup", "resource up", "resource down", "app shutdown"]


def test_sync_generator_lifespan():
    events: list[str] = []

    def lifespan(app: FastAPI) -> Iterator[None]:
        events.append("app startup")
        yield
        events.append("app shutdown")

    app = FastAPI(lifespan=lifespan)  # type: ignore[arg-type]  # ty: ignore[invalid-argument-type]
    add_route(app, events)
    with TestClient(app) as client:
        assert client.get("/").json() == {"resource": "resource", "config": None}
        # The app's own lifespan yielded no state: only the private key is added.
        assert list(client.app_state) == [("fastapi_lifespan_dependencies", id(app))]
    # Removed at shutdown: nothing of the run is kept.
    assert client.app_state == {}
    assert events == ["app startup", "resource up", "resource down", "app shutdown"]


def test_context_manager_lifespan_and_included_router_lifespans():
    events: list[str] = []

    @asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncGenerator[dict[str, str]]:
        events.append("app startup")
        yield {"config": "app"}
        events.append("app shutdown")

    @asynccontextmanager
    async def router_lifespan(app: FastAPI) -> AsyncGenerator[dict[str, str]]:
        events.append("router startup")
        yield {"router": "router"}
        events.append("router shutdown")

    app = FastAPI(lifespan=app_lifespan)
    app.include_router(APIRouter(lifespan=router_lifespan))
    add_route(app, events)
    with TestClient(app) as client:
        assert client.get("/").json() == {"resource": "resource", "config": "app"}
        assert client.app_state["router"] == "router"
    assert events == [
        "app startup",
        "router startup",
        "resource up",
        "resource down",
        "router shutdown",
        "app shutdown",
    ]


def test_startup_and_shutdown_handlers():
    events: list[str] = []

    with pytest.warns(DeprecationWarning):
        app = FastAPI(
            on_startup=[lambda: events.append("on_startup")],
            on_shutdown=[lambda: events.append("on_shutdown")],
        )

        @app.on_event("startup")  # ty: ignore[deprecated]
        def startup() -> None:
            events.append("on_event startup")

    add_route(app, events)
    with TestClient(app) as client:
        assert client.get("/").json()["resource"] == "resource"
    assert events == [
        "on_startup",
        "on_event startup",
        "resource up",
        "resource down",
        "on_shutdown",
    ]


def test_startup_code_prepares_what_dependencies_need():
    config: dict[str, str] = {}

    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        config["dsn"] = "sqlite:///:memory:"
        yield
        config.clear()

    def get_dsn() -> str:
        return config["dsn"]

    app = FastAPI(lifespan=lifespan)  # type: ignore[arg-type]  # ty: ignore[invalid-argument-type]

    @app.get("/")
    def read(dsn: Annotated[str, Depends(get_dsn, scope="lifespan")]) -> str:
        return dsn

    with TestClient(app) as client:
        assert client.get("/").json() == "sqlite:///:memory:"


def test_sync_code_runs_in_the_thread_pool():
    threads: dict[str, int] = {}

    def sync_generator() -> Iterator[str]:
        threads["setup"] = threading.get_ident()
        yield "value"
        threads["teardown"] = threading.get_ident()

    def sync_function() -> str:
        threads["function"] = threading.get_ident()
        return "value"

    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threads["loop"] = threading.get_ident()
        yield

    app = FastAPI(lifespan=lifespan)  # type: ignore[arg-type]  # ty: ignore[invalid-argument-type]

    @app.get("/")
    def read(
        a: Annotated[str, Depends(sync_generator, scope="lifespan")],
        b: Annotated[str, Depends(sync_function, scope="lifespan")],
    ) -> list[str]:
        return [a, b]

    with TestClient(app) as client:
        assert client.get("/").json() == ["value", "value"]
    assert threads["setup"] != threads["loop"]
    assert threads["teardown"] != threads["loop"]
    assert threads["function"] != threads["loop"]


def test_overrides_changed_while_running_take_effect_at_next_startup():
    def get_value() -> str:
        return "real"

    app = FastAPI()

    @app.get("/")
    def read(value: Annotated[str, Depends(get_value, scope="lifespan")]) -> str:
        return value

    stale = 'The lifespan-scoped dependency "get_value" was not set up for this request'
    with TestClient(app) as client:
        app.dependency_overrides[get_value] = lambda: "fake"
        # Never the real value silently, once it is overridden.
        with pytest.raises(FastAPIError, match=stale) as exc:
            client.get("/")
        assert "apply when the lifespan starts" in str(exc.value)
    with TestClient(app) as client:
        assert client.get("/").json() == "fake"
        app.dependency_overrides.clear()
        with pytest.raises(FastAPIError, match=stale):
            client.get("/")
    with TestClient(app) as client:
        assert client.get("/").json() == "real"
