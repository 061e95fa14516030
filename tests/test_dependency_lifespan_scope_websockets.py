from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Query, WebSocket
from fastapi.exceptions import DependencyScopeError, FastAPIError
from fastapi.testclient import TestClient


class Pool:
    def __init__(self, name: str) -> None:
        self.name = name
        self.open = True


def make_app(events: list[str], *, http: bool = True) -> tuple[FastAPI, Any]:
    async def get_pool():
        pool = Pool("real")
        events.append("pool up")
        yield pool
        pool.open = False
        events.append("pool down")

    PoolDep = Annotated[Pool, Depends(get_pool, scope="lifespan")]

    async def get_session(pool: PoolDep) -> Pool:
        return pool

    app = FastAPI()
    router = APIRouter()

    if http:

        @app.get("/")
        def read(pool: PoolDep) -> int:
            return id(pool)

    @app.websocket("/ws")
    async def app_websocket(websocket: WebSocket, pool: PoolDep) -> None:
        await websocket.accept()
        await websocket.send_json([id(pool), pool.name, pool.open])
        await websocket.close()

    @router.websocket("/ws", dependencies=[Depends(get_pool, scope="lifespan")])
    async def router_websocket(
        websocket: WebSocket, session: Annotated[Pool, Depends(get_session)]
    ) -> None:
        await websocket.accept()
        await websocket.send_json([id(session), session.name, session.open])
        await websocket.close()

    app.include_router(router, prefix="/router")
    return app, get_pool


def receive(client: TestClient, path: str) -> Any:
    with client.websocket_connect(path) as websocket:
        return websocket.receive_json()


def test_websockets_share_the_instance_of_the_run():
    events: list[str] = []
    app, _ = make_app(events)
    with TestClient(app) as client:
        pool_id = client.get("/").json()
        assert receive(client, "/ws") == [pool_id, "real", True]
        assert receive(client, "/router/ws") == [pool_id, "real", True]
        assert events == ["pool up"]
    assert events == ["pool up", "pool down"]


def test_websockets_follow_dependency_overrides():
    events: list[str] = []
    # Only WebSocket routes declare it: they alone say which one to set up.
    app, get_pool = make_app(events, http=False)
    replacement = Pool("fake")
    app.dependency_overrides[get_pool] = lambda: replacement
    with TestClient(app) as client:
        assert receive(client, "/ws") == [id(replacement), "fake", True]
        assert receive(client, "/router/ws") == [id(replacement), "fake", True]
    assert events == []


def test_websockets_follow_overrides_of_sub_dependencies():
    events: list[str] = []

    def get_settings(): ...

    def get_client(settings: Annotated[str, Depends(get_settings)]) -> str:
        events.append(settings)
        return settings

    app = FastAPI()

    @app.websocket("/ws")
    async def websocket_endpoint(
        websocket: WebSocket,
        client: Annotated[str, Depends(get_client, scope="lifespan")],
    ) -> None:
        await websocket.accept()
        await websocket.send_json(client)
        await websocket.close()

    app.dependency_overrides[get_settings] = lambda: "test settings"
    with TestClient(app) as client:
        assert receive(client, "/ws") == "test settings"
        assert receive(client, "/ws") == "test settings"
    assert events == ["test settings"]
    # Overrides apply when the lifespan starts, never silently later.
    with TestClient(app) as client:
        app.dependency_overrides[get_client] = lambda: "changed"
        with pytest.raises(FastAPIError, match='"get_client" was not set up for'):
            receive(client, "/ws")


def test_websocket_replacement_needing_request_data_fails_the_startup():
    def get_limit(): ...

    def get_limit_from_query(limit: Annotated[int, Query()]): ...

    app = FastAPI()

    @app.websocket("/ws")
    async def websocket_endpoint(
        websocket: WebSocket,
        limit: Annotated[int, Depends(get_limit, scope="lifespan")],
    ) -> None: ...

    app.dependency_overrides[get_limit] = get_limit_from_query
    with pytest.raises(DependencyScopeError) as exc, TestClient(app):
        ...
    assert (
        'The dependency "get_limit_from_query (overriding get_limit)" has scope '
        '"lifespan"'
    ) in str(exc.value)
    assert 'needs the query parameter "limit"' in str(exc.value)


def test_websocket_needing_a_lifespan_value_without_the_lifespan_fails_clearly():
    app, _ = make_app([])
    with pytest.raises(FastAPIError, match='"get_pool" is not available'):
        receive(TestClient(app), "/ws")
