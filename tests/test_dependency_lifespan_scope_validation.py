from typing import Annotated

import pytest
from fastapi import (
    Depends,
    FastAPI,
)
from fastapi.exceptions import DependencyScopeError
from fastapi.testclient import TestClient


def needs_query(q: str) -> str:
    return q  # pragma: no cover


def middle(value: Annotated[str, Depends(needs_query)]) -> None:
    pass  # pragma: no cover


def top(value: Annotated[None, Depends(middle)]) -> None:
    pass  # pragma: no cover


def test_error_names_the_chain_at_depth():
    app = FastAPI()
    with pytest.raises(DependencyScopeError) as exc:

        @app.websocket("/ws")
        async def endpoint(
            value: Annotated[None, Depends(top, scope="lifespan")],
        ) -> None:
            pass  # pragma: no cover

    assert 'The dependency "top" has scope "lifespan"' in str(exc.value)
    assert "(through top -> value=middle -> value=needs_query)" in str(exc.value)


def test_unnamed_sub_dependency_in_chain():
    class Holder:
        def __call__(self, value: Annotated[str, Depends(needs_query)]) -> None:
            pass  # pragma: no cover

    app = FastAPI()
    with pytest.raises(DependencyScopeError, match="through Holder -> value="):

        @app.get("/", dependencies=[Depends(Holder(), scope="lifespan")])
        def endpoint() -> None:
            pass  # pragma: no cover


def test_unscoped_generator_sub_dependency_is_allowed():
    def connection():
        yield "connection"

    def pool(conn: Annotated[str, Depends(connection)]) -> str:
        return conn

    app = FastAPI()

    @app.get("/")
    def endpoint(value: Annotated[str, Depends(pool, scope="lifespan")]) -> str:
        return value

    with TestClient(app) as client:
        assert client.get("/").json() == "connection"
