from functools import partial
from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, WebSocket
from fastapi.exceptions import FastAPIError
from fastapi.testclient import TestClient


class Pool:
    def __init__(self, name: str, events: list[str]) -> None:
        self.name = name
        self.events = events
        self.open = True

    def close(self) -> None:
        self.open = False
        self.events.append(f"{self.name} down")


def make_app() -> tuple[FastAPI, list[str]]:
    events: list[str] = []

    async def get_pool():
        pool = Pool("pool", events)
        events.append("pool up")
        yield pool
        pool.close()

    def get_settings() -> dict[str, str]:
        events.append("settings")
        return {"dsn": "sqlite://"}

    def get_client(
        settings: Annotated[dict[str, str], Depends(get_settings)],
        pool: Annotated[Pool, Depends(get_pool, scope="lifespan")],
    ):
        client = Pool("client", events)
        events.append("client up")
        yield (client, settings, pool)
        client.close()

    PoolDep = Annotated[Pool, Depends(get_pool, scope="lifespan")]
    ClientDep = Annotated[tuple[Pool, Any, Pool], Depends(get_client, scope="lifespan")]

    app = FastAPI()
    router = APIRouter()

    @app.get("/pool")
    def read_pool(pool: PoolDep) -> dict[str, Any]:
        return {"id": id(pool), "open": pool.open}

    @app.get("/client")
    async def read_client(client: ClientDep, pool: PoolDep) -> dict[str, Any]:
        return {"same_pool": client[2] is pool, "settings": client[1]}

    @app.websocket("/ws")
    async def websocket_pool(websocket: WebSocket, pool: PoolDep) -> None:
        await websocket.accept()
        await websocket.send_json({"id": id(pool), "open": pool.open})
        await websocket.close()

    app.include_router(router, prefix="/router")

    @router.get("/late")
    def added_after_include(pool: PoolDep) -> dict[str, Any]:
        return {"id": id(pool)}

    return app, events


def test_set_up_at_startup_shared_and_torn_down_at_shutdown():
    app, events = make_app()
    with TestClient(app) as client:
        assert events == ["pool up", "settings", "client up"]
        first = client.get("/pool").json()
        assert client.get("/pool").json() == first
        assert first["open"] is True
        assert client.get("/client").json() == {
            "same_pool": True,
            "settings": {"dsn": "sqlite://"},
        }
        with client.websocket_connect("/ws") as websocket:
            assert websocket.receive_json() == first
        assert client.get("/router/late").json() == {"id": first["id"]}
        assert events == ["pool up", "settings", "client up"]
    # Teardown in exactly the reverse order of set-up.
    assert events == ["pool up", "settings", "client up", "client down", "pool down"]


def test_each_run_gets_fresh_instances():
    app, events = make_app()
    with TestClient(app) as client:
        first = client.get("/pool").json()["id"]
    with TestClient(app) as client:
        second = client.get("/pool").json()["id"]
    assert first != second
    assert events.count("pool up") == events.count("pool down") == 2


def test_two_runs_at_the_same_time_do_not_share():
    app, events = make_app()
    with TestClient(app) as one, TestClient(app) as two:
        assert one.get("/pool").json()["id"] != two.get("/pool").json()["id"]
    assert events.count("pool down") == 2


def test_without_lifespan_run_the_error_says_how_to_fix_it():
    app, events = make_app()
    client = TestClient(app)
    with pytest.raises(FastAPIError, match='"get_pool" is not available') as exc:
        client.get("/pool")
    assert "with TestClient(app) as client:" in str(exc.value)
    assert events == []


def test_app_without_lifespan_dependencies_keeps_upstream_state():
    app = FastAPI()

    @app.get("/")
    def root() -> str:
        return "ok"

    with TestClient(app) as client:
        assert client.get("/").json() == "ok"
        assert client.app_state == {}


def test_kinds_of_callables():
    events: list[str] = []

    def sync_function() -> str:
        return "sync"

    def sync_generator():
        events.append("sync gen up")
        yield "sync gen"
        events.append("sync gen down")

    class Resource:
        def __init__(self) -> None:
            self.kind = "class"

    class CallableInstance:
        async def __call__(self) -> str:
            return "instance"

    def with_argument(value: str) -> str:
        return value

    app = FastAPI()

    @app.get("/")
    def read(
        a: Annotated[str, Depends(sync_function, scope="lifespan")],
        b: Annotated[str, Depends(sync_generator, scope="lifespan")],
        c: Annotated[Resource, Depends(Resource, scope="lifespan")],
        d: Annotated[str, Depends(CallableInstance(), scope="lifespan")],
        e: Annotated[str, Depends(partial(with_argument, "partial"), scope="lifespan")],
    ) -> list[str]:
        return [a, b, c.kind, d, e]

    with TestClient(app) as client:
        assert client.get("/").json() == [
            "sync",
            "sync gen",
            "class",
            "instance",
            "partial",
        ]
        assert events == ["sync gen up"]
    assert events == ["sync gen up", "sync gen down"]


def test_app_router_and_decorator_dependencies():
    events: list[str] = []

    def app_level() -> None:
        events.append("app")

    def router_level() -> None:
        events.append("router")

    def decorator_level() -> None:
        events.append("decorator")

    app = FastAPI(dependencies=[Depends(app_level, scope="lifespan")])
    router = APIRouter(dependencies=[Depends(router_level, scope="lifespan")])

    @router.get("/", dependencies=[Depends(decorator_level, scope="lifespan")])
    def read() -> str:
        return "ok"

    app.include_router(router)
    with TestClient(app) as client:
        assert client.get("/").json() == "ok"
        assert client.get("/").json() == "ok"
    assert sorted(events) == ["app", "decorator", "router"]


def test_unknown_scope_warns_with_the_accepted_values_and_runs_as_upstream():
    events: list[str] = []

    def per_request():
        events.append("up")
        yield "value"
        events.append("down")

    with pytest.warns(UserWarning, match="'function', 'request', 'lifespan'") as warned:
        # A typo: upstream accepts it and runs the dependency for each request.
        depends = Depends(per_request, scope="Request")  # type: ignore[arg-type]  # ty: ignore[invalid-argument-type]
    assert "Unknown dependency scope 'Request'" in str(warned[0].message)
    assert warned[0].filename == __file__
    app = FastAPI()

    @app.get("/")
    def read(value: Annotated[str, depends]) -> str:
        return value

    with TestClient(app) as client:
        assert client.get("/").json() == "value"
        assert client.get("/").json() == "value"
    assert events == ["up", "down", "up", "down"]


def test_max_concurrency_is_rejected_with_lifespan_scope():
    with pytest.raises(ValueError, match="max_concurrency cannot be combined"):
        Depends(Pool, scope="lifespan", max_concurrency=2)


def test_frontend_routes_get_app_level_lifespan_dependencies(tmp_path):
    (tmp_path / "index.html").write_text("<h1>frontend</h1>")
    events: list[str] = []

    def app_level():
        events.append("up")
        yield
        events.append("down")

    app = FastAPI(dependencies=[Depends(app_level, scope="lifespan")])
    app.frontend("/", directory=tmp_path)
    with TestClient(app) as client:
        assert client.get("/").text == "<h1>frontend</h1>"
        assert events == ["up"]
    assert events == ["up", "down"]
