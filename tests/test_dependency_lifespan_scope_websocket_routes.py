from collections.abc import AsyncIterator
from typing import Annotated

import pytest
from fastapi import APIRouter, Depends, FastAPI, WebSocket
from fastapi.exceptions import FastAPIError
from fastapi.testclient import TestClient


class Session:
    def __init__(self) -> None:
        self.open = True


async def get_session() -> AsyncIterator[Session]:
    session = Session()
    yield session
    session.open = False


SessionDep = Annotated[Session, Depends(get_session, scope="lifespan")]


def per_connection(session: SessionDep) -> Session:
    return session


sessions: list[Session] = []

app = FastAPI()
router = APIRouter(dependencies=[Depends(get_session, scope="lifespan")])


@app.websocket("/ws")
async def websocket_endpoint(websocket: WebSocket, session: SessionDep) -> None:
    sessions.append(session)
    await websocket.accept()
    await websocket.send_json({"open": session.open})
    await websocket.close()


@router.websocket("/nested")
async def nested_websocket_endpoint(
    websocket: WebSocket,
    session: Annotated[Session, Depends(per_connection)],
) -> None:
    sessions.append(session)
    await websocket.accept()
    await websocket.close()


app.include_router(router, prefix="/router")


@router.websocket("/late")
async def added_after_include(websocket: WebSocket, session: SessionDep) -> None:
    sessions.append(session)
    await websocket.accept()
    await websocket.close()


def test_websockets_share_the_lifespan_instance():
    sessions.clear()
    with TestClient(app) as client:
        with client.websocket_connect("/ws") as websocket:
            assert websocket.receive_json() == {"open": True}
        with client.websocket_connect("/router/late"):
            pass
        with client.websocket_connect("/router/nested"):
            pass
        assert len(sessions) == 3
        assert sessions[0] is sessions[1] is sessions[2]
        assert sessions[0].open
    assert not sessions[0].open


def test_websocket_without_lifespan_run():
    client = TestClient(app)
    with pytest.raises(FastAPIError, match='"get_session" is not available'):
        with client.websocket_connect("/ws"):
            pass  # pragma: no cover
