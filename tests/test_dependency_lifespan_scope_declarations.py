"""
Every declaration of a lifespan-scoped dependency that needs request data, for
each kind of request-only need, at depth 1 and 3, written with `Annotated` and
with defaults, declared in each place a lifespan dependency can be declared: each
raises `DependencyScopeError` when it is declared, naming the dependency, the
parameter and the chain.
"""

import re
from collections.abc import Callable
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
    Path,
    Query,
    Request,
    Response,
    Security,
    WebSocket,
)
from fastapi.exceptions import DependencyScopeError
from fastapi.security import OAuth2PasswordBearer, SecurityScopes
from pydantic import BaseModel
from starlette.requests import HTTPConnection

PATH = "/items/{item_id}"


class Item(BaseModel):
    name: str


def request_scoped() -> None:
    pass  # pragma: no cover


oauth2_scheme = OAuth2PasswordBearer(tokenUrl="token")


# One dependency per request-only need and way of writing it: (need, expected
# words of the message).
def path_annotated(item_id: Annotated[int, Path()]) -> None:
    pass  # pragma: no cover


def path_default(item_id: int = Path()) -> None:
    pass  # pragma: no cover


def path_implicit(item_id: int) -> None:
    pass  # pragma: no cover


def query_annotated(q: Annotated[str, Query()]) -> None:
    pass  # pragma: no cover


def query_default(q: str = Query()) -> None:
    pass  # pragma: no cover


def query_implicit(q: str = "default") -> None:
    pass  # pragma: no cover


def header_annotated(x_token: Annotated[str, Header()]) -> None:
    pass  # pragma: no cover


def header_default(x_token: str = Header()) -> None:
    pass  # pragma: no cover


def cookie_annotated(session: Annotated[str, Cookie()]) -> None:
    pass  # pragma: no cover


def cookie_default(session: str = Cookie()) -> None:
    pass  # pragma: no cover


def body_annotated(item: Annotated[dict[str, Any], Body()]) -> None:
    pass  # pragma: no cover


def body_default(item: dict[str, Any] = Body()) -> None:
    pass  # pragma: no cover


def body_implicit(item: Item) -> None:
    pass  # pragma: no cover


def form_annotated(name: Annotated[str, Form()]) -> None:
    pass  # pragma: no cover


def form_default(name: str = Form()) -> None:
    pass  # pragma: no cover


def file_annotated(upload: Annotated[bytes, File()]) -> None:
    pass  # pragma: no cover


def file_default(upload: bytes = File()) -> None:
    pass  # pragma: no cover


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


def request_scope_annotated(
    value: Annotated[None, Depends(request_scoped, scope="request")],
) -> None:
    pass  # pragma: no cover


def request_scope_default(
    value: None = Depends(request_scoped, scope="request"),
) -> None:
    pass  # pragma: no cover


def function_scope_annotated(
    value: Annotated[None, Depends(request_scoped, scope="function")],
) -> None:
    pass  # pragma: no cover


def function_scope_default(
    value: None = Depends(request_scoped, scope="function"),
) -> None:
    pass  # pragma: no cover


def security_annotated(token: Annotated[str, Security(oauth2_scheme)]) -> None:
    pass  # pragma: no cover


def security_default(token: str = Security(oauth2_scheme)) -> None:
    pass  # pragma: no cover


NEEDS: list[tuple[Callable[..., Any], str, str]] = [
    # (the dependency at the end of the chain, its parameter, the message's words)
    (path_annotated, "item_id", 'needs the path parameter "item_id"'),
    (path_default, "item_id", 'needs the path parameter "item_id"'),
    (path_implicit, "item_id", 'needs the path parameter "item_id"'),
    (query_annotated, "q", 'needs the query parameter "q"'),
    (query_default, "q", 'needs the query parameter "q"'),
    (query_implicit, "q", 'needs the query parameter "q"'),
    (header_annotated, "x_token", 'needs the header parameter "x_token"'),
    (header_default, "x_token", 'needs the header parameter "x_token"'),
    (cookie_annotated, "session", 'needs the cookie parameter "session"'),
    (cookie_default, "session", 'needs the cookie parameter "session"'),
    (body_annotated, "item", 'needs the body parameter "item"'),
    (body_default, "item", 'needs the body parameter "item"'),
    (body_implicit, "item", 'needs the body parameter "item"'),
    (form_annotated, "name", 'needs the form parameter "name"'),
    (form_default, "name", 'needs the form parameter "name"'),
    (file_annotated, "upload", 'needs the file parameter "upload"'),
    (file_default, "upload", 'needs the file parameter "upload"'),
    (needs_request, "request", 'needs the parameter "request" (request)'),
    (needs_websocket, "websocket", 'needs the parameter "websocket" (websocket)'),
    (
        needs_connection,
        "connection",
        'needs the parameter "connection" (http connection)',
    ),
    (needs_response, "response", 'needs the parameter "response" (response)'),
    (
        needs_background_tasks,
        "tasks",
        'needs the parameter "tasks" (background tasks)',
    ),
    (
        needs_security_scopes,
        "scopes",
        'needs the parameter "scopes" (security scopes)',
    ),
    (
        request_scope_annotated,
        "value",
        'depends on "request_scoped" with scope "request"',
    ),
    (
        request_scope_default,
        "value",
        'depends on "request_scoped" with scope "request"',
    ),
    (
        function_scope_annotated,
        "value",
        'depends on "request_scoped" with scope "function"',
    ),
    (
        function_scope_default,
        "value",
        'depends on "request_scoped" with scope "function"',
    ),
    # A security scheme reads the request (or the WebSocket) it is called for.
    (security_annotated, "token", 'needs the parameter "request" (http connection)'),
    (security_default, "token", 'needs the parameter "request" (http connection)'),
]


def chain_to(dependency: Callable[..., Any], depth: int, style: str) -> Any:
    """`depth` dependencies, each needing the next, ending with `dependency`."""
    for level in range(depth - 1, 0, -1):
        inner = dependency
        if style == "annotated":

            def layer(value: Annotated[Any, Depends(inner)]) -> None:
                pass  # pragma: no cover

        else:

            def layer(value: Any = Depends(inner)) -> None:
                pass  # pragma: no cover

        layer.__name__ = f"level{level}"
        dependency = layer
    return dependency


def declare(place: str, dependency: Any, style: str) -> None:
    """Declare `dependency` with scope "lifespan" in `place`."""
    depends = Depends(dependency, scope="lifespan")
    app = FastAPI()
    router = APIRouter()
    if place in ("app", "router", "websocket", "request dependency"):
        if style == "annotated":

            def endpoint(value: Annotated[Any, depends]) -> None:
                pass  # pragma: no cover

        else:

            def endpoint(value: Any = depends) -> None:
                pass  # pragma: no cover

        if place == "app":
            app.get(PATH)(endpoint)
        elif place == "router":
            router.get(PATH)(endpoint)
        elif place == "websocket":
            router.websocket(PATH)(endpoint)
        else:
            # As a sub-dependency of a request-scoped dependency.
            app.get(PATH, dependencies=[Depends(endpoint)])(lambda: None)
    elif place == "path operation dependencies":
        router.get(PATH, dependencies=[depends])(lambda: None)
    elif place == "APIRouter dependencies":
        APIRouter(prefix=PATH, dependencies=[depends])
    elif place == "FastAPI dependencies":
        FastAPI(dependencies=[depends])
    else:
        assert place == "include_router dependencies"
        app.include_router(router, prefix=PATH, dependencies=[depends])


@pytest.mark.parametrize(
    "place",
    [
        "app",
        "router",
        "websocket",
        "request dependency",
        "path operation dependencies",
        "APIRouter dependencies",
        "FastAPI dependencies",
        "include_router dependencies",
    ],
)
@pytest.mark.parametrize("style", ["annotated", "default"])
@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize(
    ("need", "parameter", "words"),
    NEEDS,
    ids=[need.__name__ for need, *_ in NEEDS],  # ty: ignore[missing-attribute]
)
def test_forbidden_declaration_raises_at_definition(
    need: Callable[..., Any],
    parameter: str,
    words: str,
    depth: int,
    style: str,
    place: str,
):
    dependency = chain_to(need, depth, style)
    if place == "FastAPI dependencies" and need is path_implicit:
        # The app has no path of its own: a plain parameter is a query one there.
        words = 'needs the query parameter "item_id"'

    with pytest.raises(DependencyScopeError) as exc:
        declare(place, dependency, style)

    message = str(exc.value)
    name = dependency.__name__
    assert message.startswith(f'The dependency "{name}" has scope "lifespan"')
    assert words in message
    steps = [name, *(f"value=level{level}" for level in range(2, depth))]
    if depth > 1:
        steps.append(f"value={need.__name__}")  # ty: ignore[missing-attribute]
    if need.__name__.startswith("security"):  # ty: ignore[missing-attribute]
        steps.append(f"{parameter}=OAuth2PasswordBearer")
    elif "depends on" in words:
        steps.append("value=request_scoped")
    chain = " -> ".join(steps)
    assert re.search(rf"\(through {re.escape(chain)}\)", message), message
