"""
Lifespan-scoped dependencies: `Depends(dependency, scope="lifespan")`.

They are set up once, when the application's lifespan starts (after the app's own
startup code), the same value is injected everywhere they are declared for the
whole run, and they are torn down when the lifespan shuts down (before the app's
own shutdown code).

Each run's values travel in the ASGI lifespan `state`, which the server copies into
every request of that run, under one private key; nothing is kept on the app
object (except on servers without lifespan `state` support, see
`_FALLBACK_ATTRIBUTE`).
"""

import logging
from collections.abc import AsyncIterator, Callable, Hashable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, cast

from fastapi import params
from fastapi.dependencies.models import Dependant, _get_cache_key, _impartial
from fastapi.exceptions import DependencyScopeError, FastAPIError
from starlette.requests import HTTPConnection, Request
from starlette.routing import Router
from starlette.types import Receive, Scope, Send

logger = logging.getLogger("fastapi")

# The private key in the lifespan state (and so in `request.state`): a mapping from
# each application to the values of its lifespan dependencies for this run.
LIFESPAN_STATE_KEY = "fastapi_lifespan_dependencies"
# Where the values of the single active run are kept on servers that don't support
# lifespan state.
_FALLBACK_ATTRIBUTE = "_fastapi_lifespan_dependencies"
# Marks the scope of the startup pseudo-request that sets the dependencies up.
_SETTING_UP_KEY = "fastapi_lifespan_setup"

_REQUEST_ONLY_PARAMS = {
    "request_param_name": "the Request",
    "websocket_param_name": "the WebSocket",
    "http_connection_param_name": "the HTTPConnection",
    "response_param_name": "the Response",
    "background_tasks_param_name": "the BackgroundTasks",
    "security_scopes_param_name": "the SecurityScopes",
}


class _State:
    # Set once a lifespan-scoped dependency is declared anywhere: until then, the
    # lifespan of every app is exactly upstream's, with no walk of its routes.
    declared = False


def _call_name(call: Callable[..., Any] | None) -> str:
    assert call is not None
    call = _impartial(call)
    return getattr(call, "__name__", None) or type(call).__name__


def _request_only_params(dependant: Dependant) -> Iterator[str]:
    for kind, fields in (
        ("path", dependant.path_params),
        ("query", dependant.query_params),
        ("header", dependant.header_params),
        ("cookie", dependant.cookie_params),
        ("body", dependant.body_params),
    ):
        for field in fields:
            field_kind = kind
            if isinstance(field.field_info, params.File):
                field_kind = "file"
            elif isinstance(field.field_info, params.Form):
                field_kind = "form"
            yield f'the {field_kind} parameter "{field.name}"'
    for attribute, description in _REQUEST_ONLY_PARAMS.items():
        param_name = getattr(dependant, attribute)
        if param_name is not None:
            yield f'the parameter "{param_name}" ({description})'


def check_lifespan_dependant(dependant: Dependant) -> None:
    """
    Check, when it is declared, that a lifespan-scoped dependency needs nothing
    that exists only during a request, at any depth.
    """
    _State.declared = True
    _check_needs(dependant, chain=[_call_name(dependant.call)])


def check_router_dependencies(
    dependencies: Sequence[params.Depends], *, path: str
) -> None:
    """
    Check the lifespan-scoped entries of a router's (or an inclusion's)
    `dependencies=` when it is declared, before it has any route.
    """
    # Imported here: fastapi.dependencies.utils imports this module.
    from fastapi.dependencies.utils import get_parameterless_sub_dependant

    for depends in dependencies:
        if depends.scope == "lifespan":
            get_parameterless_sub_dependant(depends=depends, path=path)


def _check_needs(node: Dependant, *, chain: list[str]) -> None:
    # The chain starts at the lifespan dependency being checked.
    name = chain[0]
    for needed in _request_only_params(node):
        _raise_scope_error(name, f"needs {needed}", chain)
    for sub_dependant in node.dependencies:
        # Below a dependency every sub-dependency is a named parameter.
        sub_chain = [*chain, f"{sub_dependant.name}={_call_name(sub_dependant.call)}"]
        if sub_dependant.scope in ("request", "function"):
            _raise_scope_error(
                name,
                f'depends on "{_call_name(sub_dependant.call)}" with scope '
                f'"{sub_dependant.scope}"',
                sub_chain,
            )
        # A lifespan sub-dependency was checked when it was built (sub-dependants
        # are built first): checking it again would make deep chains quadratic.
        if sub_dependant.scope != "lifespan":
            _check_needs(sub_dependant, chain=sub_chain)


def _raise_scope_error(name: str, problem: str, chain: list[str]) -> None:
    raise DependencyScopeError(
        f'The dependency "{name}" has scope "lifespan": it is set up once when the '
        f"application starts, outside of any request, but it {problem} "
        f"(through {' -> '.join(chain)}). Remove that need, or declare "
        f'"{name}" with scope "request".'
    )


def _iter_lifespan_dependants(
    dependant: Dependant, overrides: dict[Any, Any]
) -> Iterator[tuple[Hashable, Dependant]]:
    """
    The lifespan dependencies declared in this tree, with their keys, following
    dependency overrides.
    """
    # Imported here: fastapi.dependencies.utils imports this module.
    from fastapi.dependencies.utils import get_dependant

    for sub_dependant in dependant.dependencies:
        if sub_dependant.scope == "lifespan":
            yield lifespan_key(sub_dependant, parent=dependant), sub_dependant
            continue
        replacement = overrides.get(sub_dependant.call)
        if replacement is not None:
            sub_dependant = get_dependant(
                path=sub_dependant.path or "",
                call=replacement,
                name=sub_dependant.name,
                scope=sub_dependant.scope,
            )
        yield from _iter_lifespan_dependants(sub_dependant, overrides)


def _iter_route_dependants(app: Any) -> Iterator[Dependant]:
    """The dependants of the app's current routes, included routers' too."""
    # Imported here: fastapi.routing imports this module.
    from fastapi.routing import iter_route_contexts

    routes = [
        *iter_route_contexts(app.router.routes),
        # Frontend route groups carry the app's and routers' `dependencies=`.
        *app.router._iter_low_priority_routes(),
    ]
    for route in routes:
        dependant = getattr(route, "dependant", None)
        if isinstance(dependant, Dependant):
            yield dependant


def _uses_cache(dependant: Dependant) -> bool:
    # Upstream builds a `dependencies=` entry without its `use_cache`: read it
    # from the Depends() that declared it.
    depends = dependant.parameterless_depends
    return dependant.use_cache if depends is None else bool(depends.use_cache)


def lifespan_key(dependant: Dependant, *, parent: Dependant) -> Hashable:
    """
    Which instance of a lifespan dependency a declaration gets.

    With `use_cache=True`, one per dependency callable (before overrides). With
    `use_cache=False`, one per declaration: a parameter is identified by its
    function and name; an entry of a `dependencies=` list by its Depends() object
    (which the routes that share it keep alive).
    """
    if _uses_cache(dependant):
        return dependant.call
    if dependant.parameterless_depends is not None:
        return ("dependencies", id(dependant.parameterless_depends))
    return ("parameter", parent.call, dependant.name)


class _TeardownStack(AsyncExitStack):
    """
    An exit stack whose every teardown sees a normal exit.

    `AsyncExitStack` would throw the first teardown error into every later
    generator at its `yield`, skipping their cleanup. Here each one is exited as
    if nothing failed; errors are collected and the first one (in teardown order)
    is raised (or the startup error that unwinds the stack is kept), with the
    others attached as notes and logged.
    """

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        errors: list[BaseException] = []
        # Private, but stable since Python 3.7: (is_sync, callback) pairs, LIFO.
        callbacks = self._exit_callbacks  # type: ignore[attr-defined]
        while callbacks:
            is_sync, callback = callbacks.pop()
            try:
                if is_sync:
                    callback(None, None, None)
                else:
                    await callback(None, None, None)
            except BaseException as teardown_error:
                errors.append(teardown_error)
        # A startup failure stays the error reported; otherwise the first teardown
        # error is. Either way, none of the others is lost.
        primary = exc if exc is not None else (errors[0] if errors else None)
        for other in errors:
            if other is not primary:
                logger.error("Lifespan dependency teardown failed", exc_info=other)
                assert primary is not None
                primary.add_note(
                    f"Another lifespan dependency teardown failed: {other!r}"
                )
        if exc is None and primary is not None:
            raise primary
        return False


async def _set_up(app: Any, stack: AsyncExitStack) -> dict[Any, Any] | None:
    # Imported here: fastapi.dependencies.utils imports this module.
    from fastapi.dependencies.utils import solve_dependencies

    overrides = getattr(app, "dependency_overrides", {}) or {}
    declarations: dict[Hashable, Dependant] = {}
    for route_dependant in _iter_route_dependants(app):
        for key, dependant in _iter_lifespan_dependants(route_dependant, overrides):
            declarations.setdefault(key, dependant)
    if not declarations:
        return None
    # The whole startup acts like one request: one cache, one exit stack.
    request = Request(
        {
            "type": "http",
            "app": app,
            "headers": [],
            "query_string": b"",
            "path_params": {},
            "fastapi_inner_astack": stack,
            "fastapi_function_astack": stack,
            _SETTING_UP_KEY: True,
        }
    )
    dependency_cache: dict[Any, Any] = {}
    values: dict[Hashable, Any] = {}
    for key, dependant in declarations.items():
        use_cache = _uses_cache(dependant)
        cache_key = _get_cache_key(dependant=dependant)
        shared_before = cache_key in dependency_cache
        solved = await solve_dependencies(
            request=request,
            dependant=Dependant(
                dependencies=[replace(dependant, name="value", use_cache=use_cache)]
            ),
            dependency_overrides_provider=app,
            dependency_cache=dependency_cache,
            async_exit_stack=stack,
            embed_body_fields=False,
        )
        values[key] = solved.values["value"]
        if not use_cache and not shared_before:
            # A declaration's own instance is not the shared one.
            dependency_cache.pop(cache_key)
    return values


@asynccontextmanager
async def _lifespan_with_dependencies(
    lifespan_context: Callable[[Any], AbstractAsyncContextManager[Any]],
    app: Any,
    scope: Scope,
) -> AsyncIterator[Any]:
    async with lifespan_context(app) as maybe_state:
        own_state = maybe_state or {}
        async with _TeardownStack() as stack:
            values = await _set_up(app, stack)
            if values is None:
                yield maybe_state
            elif "state" in scope:
                # Keep the runs of other apps in this state: a mounted app whose
                # lifespan the parent forwarded (in the same state or in the
                # state its lifespan yields).
                runs = {
                    **scope["state"].get(LIFESPAN_STATE_KEY, {}),
                    **own_state.get(LIFESPAN_STATE_KEY, {}),
                    app: values,
                }
                yield {**own_state, LIFESPAN_STATE_KEY: runs}
            else:
                if getattr(app, _FALLBACK_ATTRIBUTE, None) is not None:
                    raise FastAPIError(
                        "The server does not support lifespan state, so the values of "
                        "lifespan-scoped dependencies are kept on the app, and another "
                        "lifespan run of this app is still active. Stop it first, or "
                        "use a server that supports lifespan state."
                    )
                setattr(app, _FALLBACK_ATTRIBUTE, values)
                try:
                    yield maybe_state
                finally:
                    setattr(app, _FALLBACK_ATTRIBUTE, None)


@dataclass(slots=True)
class _LifespanRun:
    # Starlette's `Router.lifespan` runs the ASGI lifespan protocol and calls
    # `self.lifespan_context(app)` with the app only. This stands in for the router
    # for one run so that the context also sees the lifespan scope (is `state`
    # supported?).
    router: Router
    scope: Scope

    def lifespan_context(self, app: Any) -> AbstractAsyncContextManager[Any]:
        return _lifespan_with_dependencies(
            self.router.lifespan_context, app, self.scope
        )


async def handle_lifespan(
    router: Router, scope: Scope, receive: Receive, send: Send
) -> None:
    """Run the ASGI lifespan of `router`, with lifespan dependencies if any."""
    app = scope.get("app")
    if not _State.declared or getattr(app, "router", None) is not router:
        await router.lifespan(scope, receive, send)
        return
    run = cast(Router, _LifespanRun(router, scope))
    await Router.lifespan(run, scope, receive, send)


def get_lifespan_value(
    connection: HTTPConnection, dependant: Dependant, *, parent: Dependant
) -> Any:
    """The value of a lifespan dependency for this request's run (the hot path)."""
    scope = connection.scope
    app = scope.get("app")
    runs = (scope.get("state") or {}).get(LIFESPAN_STATE_KEY)
    values = runs.get(app) if runs is not None else None
    if values is None:
        values = getattr(app, _FALLBACK_ATTRIBUTE, None)
        if values is None:
            raise FastAPIError(
                f'The lifespan-scoped dependency "{_call_name(dependant.call)}" is '
                "not available: the application's lifespan did not run, so lifespan "
                "dependencies were not set up (or none was declared when it "
                "started). Run the lifespan: in tests use `with TestClient(app) as "
                "client:`; run the server with lifespan on; for a mounted app, make "
                "the parent forward lifespan events to it."
            )
    try:
        return values[lifespan_key(dependant, parent=parent)]
    except KeyError:
        raise FastAPIError(
            f'The lifespan-scoped dependency "{_call_name(dependant.call)}" was not '
            "set up when this lifespan run started (was it added, or overridden, "
            "while the app was running?). Dependency overrides take effect at the "
            "next startup."
        ) from None


def is_setting_up(connection: HTTPConnection) -> bool:
    return _SETTING_UP_KEY in connection.scope
