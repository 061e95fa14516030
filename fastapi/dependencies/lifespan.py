"""
Lifespan-scoped dependencies: `Depends(dependency, scope="lifespan")`.

They are set up once, when the application's lifespan starts (after the app's own
startup code), the same value is injected everywhere they are declared for the
whole run, and they are torn down when the lifespan shuts down (before the app's
own shutdown code).

`lifespan_dependencies_app()` wraps the ASGI lifespan of a `FastAPI` app: it sets
the dependencies up when the app reports `lifespan.startup.complete` and tears them
down when the server asks for `lifespan.shutdown`. Each run's values travel in the
ASGI lifespan `state`, which the server copies into every request of that run,
under one private key per app; nothing is kept on the app object (except on
servers without lifespan `state` support, see `_FALLBACK_ATTRIBUTE`).
"""

import traceback
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import params
from fastapi.concurrency import contextmanager_in_threadpool, run_in_threadpool
from fastapi.dependencies.models import (
    Dependant,
    _impartial,
    _is_async_gen_callable,
    _is_coroutine_callable,
    _is_gen_callable,
)
from fastapi.exceptions import DependencyScopeError, FastAPIError
from fastapi.logger import logger
from starlette.requests import HTTPConnection
from starlette.routing import Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The first item of each app's private key in the lifespan state (and so in
# `request.state`); the second is the app's `id()`, so that the values of several
# apps survive a plain dict merge of their states.
LIFESPAN_STATE_KEY = "fastapi_lifespan_dependencies"
# Where the values of the single active run are kept on servers that don't support
# lifespan state.
_FALLBACK_ATTRIBUTE = "_fastapi_lifespan_dependencies"

_REQUEST_ONLY_PARAMS = {
    "request_param_name": "the Request",
    "websocket_param_name": "the WebSocket",
    "http_connection_param_name": "the HTTPConnection",
    "response_param_name": "the Response",
    "background_tasks_param_name": "the BackgroundTasks",
    "security_scopes_param_name": "the SecurityScopes",
}


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
        for field_ in fields:
            field_kind = kind
            if isinstance(field_.field_info, params.File):
                field_kind = "file"
            elif isinstance(field_.field_info, params.Form):
                field_kind = "form"
            yield f'the {field_kind} parameter "{field_.name}"'
    for attribute, description in _REQUEST_ONLY_PARAMS.items():
        param_name = getattr(dependant, attribute)
        if param_name is not None:
            yield f'the parameter "{param_name}" ({description})'


def check_lifespan_dependant(dependant: Dependant) -> None:
    """
    Check, when it is declared, that a lifespan-scoped dependency needs nothing
    that exists only during a request, at any depth.
    """
    _check_needs(dependant, chain=[_call_name(dependant.call)], overrides={})


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


def _replacement(dependant: Dependant, overrides: dict[Any, Any]) -> Dependant:
    """The dependant that runs in place of `dependant` with these overrides."""
    replacement = overrides.get(dependant.call)
    if replacement is None:
        return dependant
    # Imported here: fastapi.dependencies.utils imports this module.
    from fastapi.dependencies.utils import get_dependant

    # Built without a scope: it is checked at startup, naming the override.
    return get_dependant(
        path=dependant.path or "", call=replacement, name=dependant.name
    )


def _describe(dependant: Dependant, used: Dependant) -> str:
    """The dependency's name, and which one it overrides if it is a replacement."""
    name = _call_name(used.call)
    if used is not dependant:
        name += f" (overriding {_call_name(dependant.call)})"
    return name


def _check_needs(
    node: Dependant,
    *,
    chain: list[str],
    overrides: dict[Any, Any],
    checked: set[int] | None = None,
) -> None:
    """
    Raise `DependencyScopeError` if `node` needs request data at any depth,
    following `overrides`. `checked` (at startup) remembers the lifespan
    sub-dependencies already checked; without it (at declaration) they are
    skipped, as they were checked when they were built.
    """
    for needed in _request_only_params(node):
        _raise_scope_error(f"needs {needed}", chain)
    for sub_dependant in node.dependencies:
        used = _replacement(sub_dependant, overrides)
        # Below a dependency every sub-dependency is a named parameter.
        sub_chain = [*chain, f"{sub_dependant.name}={_describe(sub_dependant, used)}"]
        if sub_dependant.scope in ("request", "function"):
            _raise_scope_error(
                f'depends on "{_call_name(sub_dependant.call)}" with scope '
                f'"{sub_dependant.scope}"',
                sub_chain,
            )
        if used is sub_dependant and sub_dependant.scope == "lifespan":
            # Checking a lifespan sub-dependency again would make deep chains
            # quadratic.
            if checked is None or id(sub_dependant) in checked:
                continue
            checked.add(id(sub_dependant))
        _check_needs(used, chain=sub_chain, overrides=overrides, checked=checked)


def _raise_scope_error(problem: str, chain: list[str]) -> None:
    # The chain starts at the lifespan dependency being checked.
    name = chain[0]
    if " (overriding " in name:
        fix = "Override it with a dependency that needs nothing from a request."
    else:
        fix = f'Remove that need, or declare "{name}" with scope "request".'
    raise DependencyScopeError(
        f'The dependency "{name}" has scope "lifespan": it is set up once when the '
        f"application starts, outside of any request, but it {problem} "
        f"(through {' -> '.join(chain)}). {fix}"
    )


def _uses_cache(dependant: Dependant) -> bool:
    # Upstream builds a `dependencies=` entry without its `use_cache`: read it
    # from the Depends() that declared it.
    depends = dependant.parameterless_depends
    return dependant.use_cache if depends is None else depends.use_cache


def lifespan_key(dependant: Dependant, *, parent: Dependant | None) -> Hashable:
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
    assert parent is not None
    return ("parameter", parent.call, dependant.name)


def _iter_lifespan_dependants(
    dependant: Dependant, overrides: dict[Any, Any]
) -> Iterator[tuple[Hashable, Dependant]]:
    """
    The lifespan dependencies declared in this tree, with their keys, following
    dependency overrides.
    """
    for sub_dependant in dependant.dependencies:
        if sub_dependant.scope == "lifespan":
            yield lifespan_key(sub_dependant, parent=dependant), sub_dependant
        else:
            yield from _iter_lifespan_dependants(
                _replacement(sub_dependant, overrides), overrides
            )


def _overrides_of(route: Any) -> dict[Any, Any]:
    """
    The overrides a route's requests follow: those of its overrides provider
    (the app for the app's routes and included routers; none for the routes of
    a router mounted with `mount()`, unless the router was given one).
    """
    provider = getattr(route, "dependency_overrides_provider", None)
    return getattr(provider, "dependency_overrides", None) or {}


def _iter_router_dependants(
    router: Router, seen: set[int]
) -> Iterator[tuple[Dependant, bool, dict[Any, Any]]]:
    """
    The dependants declared in a router's tree: those of its routes (included
    routers' and routers mounted with `mount()` too), and the lifespan-scoped
    entries of its and its included routers' `dependencies=` lists, even without
    routes. Each comes with whether it is such an entry, and the dependency
    overrides that its requests follow.
    """
    # Imported here: fastapi.routing imports this module.
    from fastapi.routing import APIRouter, iter_route_contexts

    if id(router) in seen:
        return
    seen.add(id(router))
    routes: list[Any] = list(iter_route_contexts(router.routes))
    if isinstance(router, APIRouter):
        # Frontend route groups carry the app's and routers' `dependencies=`.
        routes.extend(router._iter_low_priority_routes())
    mounted: list[Router] = []
    for route in routes:
        dependant = getattr(route, "dependant", None)
        if isinstance(dependant, Dependant):
            yield dependant, False, _overrides_of(route)
        # A router mounted with `mount()` has no lifespan of its own: its routes
        # belong to this app's run.
        sub_app = getattr(getattr(route, "original_route", route), "app", None)
        if isinstance(sub_app, Router):
            mounted.append(sub_app)
    for dependant in _iter_listed_dependants(router):
        yield dependant, True, _overrides_of(router)
    for sub_router in mounted:
        yield from _iter_router_dependants(sub_router, seen)


def _iter_listed_dependants(router: Router) -> Iterator[Dependant]:
    """
    The lifespan-scoped entries of the `dependencies=` lists of a router and its
    inclusions (the others only run with a route).
    """
    # Imported here: fastapi.routing imports this module.
    from fastapi.dependencies.utils import get_parameterless_sub_dependant
    from fastapi.routing import _IncludedRouter

    path = getattr(router, "prefix", "")
    listed = list(getattr(router, "dependencies", []))
    included = [route for route in router.routes if isinstance(route, _IncludedRouter)]
    for route in included:
        listed.extend(route.include_context.dependencies)
    for depends in listed:
        if depends.scope == "lifespan":
            yield get_parameterless_sub_dependant(depends=depends, path=path)
    for route in included:
        yield from _iter_listed_dependants(route.original_router)


# A lifespan declaration and the dependency overrides that its requests follow.
_Declaration = tuple[Dependant, dict[Any, Any]]


def _declares_lifespan(dependant: Dependant) -> bool:
    return any(
        sub_dependant.scope == "lifespan" or _declares_lifespan(sub_dependant)
        for sub_dependant in dependant.dependencies
    )


def _may_declare_lifespan(router: Router, seen: set[int]) -> bool:
    """
    Whether a router's tree may declare a lifespan dependency (or follows
    overrides, whose replacements may), read from the routes as they were
    declared: the routes of included routers are only built (as upstream does
    at the first request) for an app that may have some.
    """
    # Imported here: fastapi.routing imports this module.
    from fastapi.routing import _IncludedRouter

    if id(router) in seen:
        return False
    seen.add(id(router))
    listed = list(getattr(router, "dependencies", []))
    routes = [*router.routes, *getattr(router, "_low_priority_routes", [])]
    for route in routes:
        if isinstance(route, _IncludedRouter):
            listed.extend(route.include_context.dependencies)
            if _may_declare_lifespan(route.original_router, seen):
                return True
            continue
        dependant = getattr(route, "dependant", None)
        if isinstance(dependant, Dependant) and (
            _overrides_of(route) or _declares_lifespan(dependant)
        ):
            return True
        sub_app = getattr(route, "app", None)
        if isinstance(sub_app, Router) and _may_declare_lifespan(sub_app, seen):
            return True
    return any(depends.scope == "lifespan" for depends in listed)


def _declarations(app: Any) -> dict[Hashable, _Declaration]:
    """
    Every lifespan declaration of the app, in order, following the overrides of
    the routes that declare it.
    """
    declarations: dict[Hashable, _Declaration] = {}
    if not _may_declare_lifespan(app.router, set()):
        return declarations
    for dependant, is_entry, overrides in _iter_router_dependants(app.router, set()):
        if is_entry:
            key = lifespan_key(dependant, parent=None)
            declarations.setdefault(key, (dependant, overrides))
            continue
        for key, lifespan_dependant in _iter_lifespan_dependants(dependant, overrides):
            declarations.setdefault(key, (lifespan_dependant, overrides))
    return declarations


def _named(error: BaseException, name: str) -> BaseException:
    """
    Name the dependency in the generator protocol's own errors ("generator
    didn't yield", "generator didn't stop"), which don't say which one.
    """
    if isinstance(error, RuntimeError) and str(error).startswith("generator didn't"):
        named = RuntimeError(f'{error}: the lifespan-scoped dependency "{name}"')
        named.__cause__ = error
        return named
    return error


_SET_UP_NOTE = "while setting up the lifespan-scoped dependency"


def _note_failed_set_up(error: Exception, name: str) -> None:
    """
    Name the dependency whose set-up failed on the error, which keeps its type
    (a driver's connection error, say): only the innermost one, which failed.
    """
    notes = getattr(error, "__notes__", ())
    if not any(note.startswith(_SET_UP_NOTE) for note in notes):
        error.add_note(f'{_SET_UP_NOTE} "{name}"')


@dataclass(slots=True)
class _Solver:
    """Set up the lifespan dependencies of one run: one startup, like one request."""

    # Exited in reverse order at shutdown: (name, entered context manager).
    teardowns: list[tuple[str, AbstractAsyncContextManager[Any]]]
    # One instance per callable that actually runs (use_cache=True) or per
    # declaration (use_cache=False).
    instances: dict[Hashable, Any] = field(default_factory=dict)
    # The values of unscoped sub-dependencies, cached as within one request.
    cache: dict[Any, Any] = field(default_factory=dict)

    async def lifespan_value(
        self, dependant: Dependant, key: Hashable, overrides: dict[Any, Any]
    ) -> Any:
        used = _replacement(dependant, overrides)
        instance_key = used.call if _uses_cache(dependant) else key
        if instance_key not in self.instances:
            try:
                self.instances[instance_key] = await self._call(used, overrides)
            except Exception as error:
                _note_failed_set_up(error, _describe(dependant, used))
                raise
        return self.instances[instance_key]

    async def _unscoped_value(
        self, dependant: Dependant, overrides: dict[Any, Any]
    ) -> Any:
        used = _replacement(dependant, overrides)
        if dependant.use_cache and used.call in self.cache:
            return self.cache[used.call]
        value = await self._call(used, overrides)
        self.cache.setdefault(used.call, value)
        return value

    async def _call(self, dependant: Dependant, overrides: dict[Any, Any]) -> Any:
        values: dict[str, Any] = {}
        for sub_dependant in dependant.dependencies:
            if sub_dependant.scope == "lifespan":
                key = lifespan_key(sub_dependant, parent=dependant)
                value = await self.lifespan_value(sub_dependant, key, overrides)
            else:
                value = await self._unscoped_value(sub_dependant, overrides)
            if sub_dependant.name is not None:
                values[sub_dependant.name] = value
        return await self._enter(dependant, values)

    async def _enter(self, dependant: Dependant, values: dict[str, Any]) -> Any:
        """Call the dependency with its arguments; enter it if it's a generator."""
        call = dependant.call
        assert call is not None
        context_manager: AbstractAsyncContextManager[Any]
        if _is_async_gen_callable(call):
            context_manager = asynccontextmanager(call)(**values)
        elif _is_gen_callable(call):
            # Set-up and teardown in the thread pool, as for request dependencies.
            context_manager = contextmanager_in_threadpool(
                contextmanager(call)(**values)
            )
        elif _is_coroutine_callable(call):
            return await call(**values)
        else:
            return await run_in_threadpool(call, **values)
        name = _call_name(call)
        try:
            value = await context_manager.__aenter__()
        except RuntimeError as error:
            named = _named(error, name)
            if named is error:
                raise
            raise named from error
        self.teardowns.append((name, context_manager))
        return value


@dataclass(slots=True)
class _LifespanRun:
    """One run (startup to shutdown) of an app's lifespan dependencies."""

    app: Any
    scope: Scope
    teardowns: list[tuple[str, AbstractAsyncContextManager[Any]]] = field(
        default_factory=list
    )
    active: bool = False
    # The first teardown error, raised once the app's own shutdown has run.
    error: BaseException | None = None

    async def set_up(self) -> None:
        declarations = _declarations(self.app)
        if not declarations:
            return
        # Everything is checked before anything is set up.
        checked: dict[int, set[int]] = {}
        for dependant, overrides in declarations.values():
            used = _replacement(dependant, overrides)
            chain = [_describe(dependant, used)]
            _check_needs(
                used,
                chain=chain,
                overrides=overrides,
                checked=checked.setdefault(id(overrides), set()),
            )
        if "state" not in self.scope:
            if getattr(self.app, _FALLBACK_ATTRIBUTE, None) is not None:
                raise FastAPIError(
                    "The server does not support lifespan state, so the values of "
                    "lifespan-scoped dependencies are kept on the app, and another "
                    "lifespan run of this app is still active. Stop it first, or "
                    "use a server that supports lifespan state."
                )
            # Claimed before the first await, so that a concurrent run fails too.
            setattr(self.app, _FALLBACK_ATTRIBUTE, {})
        self.active = True
        try:
            values = await self._set_up_values(declarations)
        except BaseException as error:
            # The startup error stays the one reported.
            for teardown_error in await self.tear_down():
                _attach(error, teardown_error)
            raise
        if "state" in self.scope:
            self.scope["state"][(LIFESPAN_STATE_KEY, id(self.app))] = values
        else:
            setattr(self.app, _FALLBACK_ATTRIBUTE, values)

    async def _set_up_values(
        self, declarations: dict[Hashable, _Declaration]
    ) -> dict[Hashable, Any]:
        """Set up every declaration, in order, recording what to tear down."""
        solver = self._solver()
        return {
            key: await solver.lifespan_value(dependant, key, overrides)
            for key, (dependant, overrides) in declarations.items()
        }

    def _solver(self) -> _Solver:
        """What sets the dependencies up, recording their teardowns."""
        return _Solver(teardowns=self.teardowns)

    async def tear_down(self) -> list[BaseException]:
        """
        Exit every dependency, each as if nothing failed; return the errors in
        teardown order.
        """
        if not self.active:
            return []
        self.active = False
        errors = await self._tear_down_values()
        if "state" in self.scope:
            self.scope["state"].pop((LIFESPAN_STATE_KEY, id(self.app)), None)
        else:
            setattr(self.app, _FALLBACK_ATTRIBUTE, None)
        return errors

    async def _tear_down_values(self) -> list[BaseException]:
        """Exit what was set up in reverse order, each one even if others fail."""
        errors: list[BaseException] = []
        while self.teardowns:
            name, context_manager = self.teardowns.pop()
            try:
                await context_manager.__aexit__(None, None, None)
            except BaseException as error:
                errors.append(_named(error, name))
        return errors


def _attach(error: BaseException, other: BaseException) -> None:
    """Keep `other` (logged, and noted on `error`) when `error` is raised."""
    logger.error("Lifespan dependency teardown failed", exc_info=other)
    error.add_note(f"Another lifespan dependency teardown failed: {other!r}")


def lifespan_dependencies_app(
    app: Any,
    lifespan_app: ASGIApp,
    *,
    lifespan_run_class: Callable[..., _LifespanRun] = _LifespanRun,
) -> ASGIApp:
    """
    Wrap the ASGI lifespan of `app` (`lifespan_app`) to run its lifespan-scoped
    dependencies: set up once the app's own startup is complete, torn down when
    the server asks for shutdown, before the app's own shutdown code.
    """

    async def run(scope: Scope, receive: Receive, send: Send) -> None:
        lifespan_run = lifespan_run_class(app=app, scope=scope)

        async def receive_lifespan() -> Message:
            try:
                message = await receive()
            except BaseException as error:
                # Cancelled while running: still tear everything down.
                for teardown_error in await lifespan_run.tear_down():
                    _attach(error, teardown_error)
                raise
            if message["type"] == "lifespan.shutdown":
                # The app's own shutdown code runs next, whatever happens here;
                # the first teardown error is raised after it.
                errors = await lifespan_run.tear_down()
                if errors:
                    lifespan_run.error = errors[0]
                    for other in errors[1:]:
                        _attach(errors[0], other)
            return message

        async def send_lifespan(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                await lifespan_run.set_up()
                try:
                    await send(message)
                except BaseException as error:
                    # The server is gone (or the task cancelled) before the run
                    # started: nothing will ask for shutdown.
                    for teardown_error in await lifespan_run.tear_down():
                        _attach(error, teardown_error)
                    raise
                return
            if (
                message["type"] == "lifespan.shutdown.complete"
                and lifespan_run.error is not None
            ):
                await send(
                    {
                        "type": "lifespan.shutdown.failed",
                        "message": "".join(
                            traceback.format_exception(lifespan_run.error)
                        ),
                    }
                )
                raise lifespan_run.error
            await send(message)

        try:
            await lifespan_app(scope, receive_lifespan, send_lifespan)
        except BaseException as error:
            if lifespan_run.error is not None and lifespan_run.error is not error:
                # The app's own shutdown failed too: keep both.
                _attach(error, lifespan_run.error)
            raise

    return run


def get_lifespan_value(
    connection: HTTPConnection, dependant: Dependant, *, parent: Dependant
) -> Any:
    """The value of a lifespan dependency for this request's run (the hot path)."""
    scope = connection.scope
    app = scope.get("app")
    state = scope.get("state")
    values = state.get((LIFESPAN_STATE_KEY, id(app))) if state else None
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
