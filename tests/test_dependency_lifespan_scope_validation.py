import re
from typing import Annotated, Any

import pytest
from fastapi import (
    APIRouter,
    BackgroundTasks,
    Body,
    Cookie,
    Depends,
    FastAPI,
    File,
    Form,
    Header,
    Request,
    Response,
    WebSocket,
)
from fastapi.exceptions import DependencyScopeError
from fastapi.security import SecurityScopes
from starlette.requests import HTTPConnection


def needs_query(q: str) -> str:
    return q  # pragma: no cover


def needs_header(x_token: Annotated[str, Header()]) -> str:
    return x_token  # pragma: no cover


def needs_cookie(session: Annotated[str, Cookie()]) -> str:
    return session  # pragma: no cover


def needs_body(item: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
    return item  # pragma: no cover


def needs_form(name: Annotated[str, Form()]) -> str:
    return name  # pragma: no cover


def needs_file(upload: Annotated[bytes, File()]) -> bytes:
    return upload  # pragma: no cover


def needs_request(request: Request) -> None:
    pass  # pragma: no cover


def needs_websocket(websocket: WebSocket) -> None:
    pass  # pragma: no cover


def needs_connection(connection: HTTPConnection) -> None:
    pass  # pragma: no cover


def needs_response(response: Response) -> None:
    pass  # pragma: no cover


def needs_background_tasks(tasks: BackgroundTasks) -> None:
    pass  # pragma: no cover


def needs_security_scopes(scopes: SecurityScopes) -> None:
    pass  # pragma: no cover


def request_scoped() -> None:
    pass  # pragma: no cover


def needs_request_scoped(
    value: Annotated[None, Depends(request_scoped, scope="request")],
) -> None:
    pass  # pragma: no cover


def needs_function_scoped(
    value: Annotated[None, Depends(request_scoped, scope="function")],
) -> None:
    pass  # pragma: no cover


def middle(value: Annotated[str, Depends(needs_query)]) -> None:
    pass  # pragma: no cover


def top(value: Annotated[None, Depends(middle)]) -> None:
    pass  # pragma: no cover


@pytest.mark.parametrize(
    ("dependency", "expected"),
    [
        (needs_query, 'needs the query parameter "q"'),
        (needs_header, 'needs the header parameter "x_token"'),
        (needs_cookie, 'needs the cookie parameter "session"'),
        (needs_body, 'needs the body parameter "item"'),
        (needs_form, 'needs the form parameter "name"'),
        (needs_file, 'needs the file parameter "upload"'),
        (needs_request, 'needs the parameter "request" (the Request)'),
        (needs_websocket, 'needs the parameter "websocket" (the WebSocket)'),
        (needs_connection, 'needs the parameter "connection" (the HTTPConnection)'),
        (needs_response, 'needs the parameter "response" (the Response)'),
        (needs_background_tasks, 'needs the parameter "tasks" (the BackgroundTasks)'),
        (needs_security_scopes, 'needs the parameter "scopes" (the SecurityScopes)'),
        (needs_request_scoped, 'depends on "request_scoped" with scope "request"'),
        (needs_function_scoped, 'depends on "request_scoped" with scope "function"'),
    ],
)
def test_request_only_needs_are_rejected_at_declaration(dependency: Any, expected: str):
    app = FastAPI()
    with pytest.raises(DependencyScopeError, match=re.escape(expected)) as exc:

        @app.get("/")
        def endpoint(
            value: Annotated[Any, Depends(dependency, scope="lifespan")],
        ) -> None:
            pass  # pragma: no cover

    assert f'The dependency "{dependency.__name__}" has scope "lifespan"' in str(
        exc.value
    )


def test_path_parameter_is_rejected():
    def needs_item_id(item_id: int) -> int:
        return item_id  # pragma: no cover

    router = APIRouter()
    with pytest.raises(DependencyScopeError, match='path parameter "item_id"'):

        @router.get("/items/{item_id}")
        def endpoint(
            value: Annotated[int, Depends(needs_item_id, scope="lifespan")],
        ) -> None:
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


def test_router_level_declaration_is_checked_when_the_router_is_created():
    with pytest.raises(DependencyScopeError, match="through top -> value=middle"):
        APIRouter(dependencies=[Depends(top, scope="lifespan")])


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
        return value  # pragma: no cover

    assert app.routes
