"""
Lifespan-scoped dependencies, declared with `Depends(dependency, scope="lifespan")`.

They are set up once the app's own startup code has run, the same value is given to
every request of that lifespan run, and they are torn down when the server asks for
shutdown, before the app's own shutdown code. Each run's values travel in the ASGI
lifespan state, which the server copies into every request, under a key of the app's
own.
"""

import asyncio
import sys
import traceback
from collections.abc import Hashable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
from fastapi.concurrency import contextmanager_in_threadpool, run_in_threadpool
from fastapi.dependencies.models import (
    Dependant,
    _is_async_gen_callable,
    _is_coroutine_callable,
    _is_gen_callable,
)
from fastapi.dependencies.utils import (
    _LIFESPAN_STATE_KEY,
    _check_lifespan_dependant,
    _dependency_name,
    _described,
    _lifespan_key,
    _lifespan_replacement,
    get_parameterless_sub_dependant,
)
from fastapi.exceptions import FastAPIError
from fastapi.logger import logger
from fastapi.routing import APIRoute, APIRouter, APIWebSocketRoute, _IncludedRouter
from starlette.applications import Starlette
from starlette.routing import Mount, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# A lifespan-scoped dependency as declared, the dependant that declares it (None for
# a `dependencies=` entry) and the overrides provider of the requests that use it.
_Declaration = tuple[Dependant, Dependant | None, Any]
_Teardowns = list[tuple[str, AbstractAsyncContextManager[Any]]]
_SET_UP_NOTE = "while setting up the lifespan-scoped dependency"


def _route_dependants(
    router: Router, provider: Any, mounted_apps: list[tuple[str, Starlette]]
) -> Iterator[tuple[Dependant, Any]]:
    """
    The dependants of a router's routes (included and mounted routers' too), and the
    lifespan-scoped entries of its and its inclusions' `dependencies=` (set up even
    without routes), each with the overrides provider its requests use.
    """
    listed = list(router.dependencies) if isinstance(router, APIRouter) else []
    for route in router.routes:
        if isinstance(route, _IncludedRouter):
            listed.extend(route.include_context.dependencies)
            yield from _route_dependants(route.original_router, provider, mounted_apps)
        elif isinstance(route, (APIRoute, APIWebSocketRoute)):
            yield route.dependant, provider
        elif isinstance(route, Mount) and isinstance(route.app, Router):
            # A router has no lifespan of its own: its routes belong to this run,
            # with the overrides of its own provider.
            own = getattr(route.app, "dependency_overrides_provider", None)
            yield from _route_dependants(route.app, own, mounted_apps)
        elif isinstance(route, Mount) and isinstance(route.app, Starlette):
            mounted_apps.append((route.path, route.app))
    for depends in listed:
        if depends.scope == "lifespan":
            yield get_parameterless_sub_dependant(depends=depends, path=""), provider


def _lifespan_dependants(
    dependant: Dependant, overrides: dict[Any, Any]
) -> Iterator[tuple[Dependant, Dependant | None]]:
    """The lifespan-scoped dependencies a dependant needs, following overrides."""
    if dependant.scope == "lifespan":
        yield dependant, None
        return
    for sub_dependant in dependant.dependencies:
        if sub_dependant.scope == "lifespan":
            yield sub_dependant, dependant
        else:
            used = _lifespan_replacement(sub_dependant, overrides)
            yield from _lifespan_dependants(used, overrides)


def _declarations(
    app: Any, mounted_apps: list[tuple[str, Starlette]]
) -> dict[Hashable, _Declaration]:
    """Every lifespan-scoped dependency declared in the app, in order."""
    declarations: dict[Hashable, _Declaration] = {}
    provider = app.router.dependency_overrides_provider
    for dependant, provider in _route_dependants(app.router, provider, mounted_apps):
        overrides = getattr(provider, "dependency_overrides", {})
        for declared, parent in _lifespan_dependants(dependant, overrides):
            key = (_lifespan_key(declared, parent), id(provider))
            declarations.setdefault(key, (declared, parent, provider))
    return declarations


def _named(error: BaseException, name: str) -> BaseException:
    """Name the dependency in the generator protocol's errors, which don't."""
    if isinstance(error, RuntimeError) and str(error).startswith("generator didn't"):
        named = RuntimeError(f'{error}: the lifespan-scoped dependency "{name}"')
        named.__cause__ = error
        return named
    return error


def _note_set_up_failure(
    error: Exception, dependant: Dependant, used: Dependant
) -> None:
    """Name the lifespan-scoped dependency whose set-up failed: the innermost one."""
    if not any(
        note.startswith(_SET_UP_NOTE) for note in getattr(error, "__notes__", [])
    ):
        error.add_note(f'{_SET_UP_NOTE} "{_described(dependant, used)}"')


@dataclass(slots=True)
class _Solver:
    """Set up the lifespan-scoped dependencies of a run, which acts as one request."""

    teardowns: _Teardowns
    # One per callable that runs, or per declaration with `use_cache=False`.
    instances: dict[Hashable, Any] = field(default_factory=dict)
    # Unscoped sub-dependencies, cached as in a request.
    cache: dict[Any, Any] = field(default_factory=dict)

    def slot(
        self, dependant: Dependant, parent: Dependant | None, overrides: dict[Any, Any]
    ) -> tuple[dict[Hashable, Any], Hashable, Dependant]:
        """Where the value of a declaration is kept, and the dependant that runs."""
        used = _lifespan_replacement(dependant, overrides)
        if dependant.scope != "lifespan":
            return self.cache, used.call, used
        key = _lifespan_key(dependant, parent)
        return (
            self.instances,
            used.call if key is dependant.call else (key, used.call),
            used,
        )

    async def solve(
        self, dependant: Dependant, parent: Dependant | None, overrides: dict[Any, Any]
    ) -> Any:
        values, key, used = self.slot(dependant, parent, overrides)
        if key in values and (dependant.use_cache or values is self.instances):
            return values[key]
        try:
            value = await self._call(used, overrides)
        except Exception as error:
            if dependant.scope == "lifespan":
                _note_set_up_failure(error, dependant, used)
            raise
        values.setdefault(key, value)
        return value

    async def _call(self, dependant: Dependant, overrides: dict[Any, Any]) -> Any:
        values = {}
        for sub_dependant in dependant.dependencies:
            value = await self.solve(sub_dependant, dependant, overrides)
            if sub_dependant.name is not None:
                values[sub_dependant.name] = value
        return await self._enter(dependant, values)

    async def _enter(self, dependant: Dependant, values: dict[str, Any]) -> Any:
        call = dependant.call
        assert call is not None
        context_manager: AbstractAsyncContextManager[Any]
        if _is_async_gen_callable(call):
            context_manager = asynccontextmanager(call)(**values)
        elif _is_gen_callable(call):
            context_manager = contextmanager_in_threadpool(
                contextmanager(call)(**values)
            )
        elif _is_coroutine_callable(call):
            return await call(**values)
        else:
            return await run_in_threadpool(call, **values)
        name = _dependency_name(call)
        try:
            value = await context_manager.__aenter__()
        except RuntimeError as error:
            named = _named(error, name)
            if named is error:
                raise
            raise named from error
        self.teardowns.append((name, context_manager))
        return value


async def _set_up_values(
    declarations: dict[Hashable, _Declaration], teardowns: _Teardowns
) -> dict[Hashable, tuple[Any, Any]]:
    """Each declaration's value, with the callable that made it, in order."""
    solver = _Solver(teardowns)
    values = {}
    for key, (declared, parent, provider) in declarations.items():
        overrides = getattr(provider, "dependency_overrides", {})
        value = await solver.solve(declared, parent, overrides)
        values[key] = (overrides.get(declared.call, declared.call), value)
    return values


async def _set_up(app: Any, scope: Scope, teardowns: _Teardowns) -> None:
    mounted_apps: list[tuple[str, Starlette]] = []
    declarations = _declarations(app, mounted_apps)
    if declarations:
        # Replacements are only known now: check them before setting anything up.
        checked: set[Hashable] = set()
        for declared, _, provider in declarations.values():
            overrides = getattr(provider, "dependency_overrides", {})
            used = _lifespan_replacement(declared, overrides)
            chain = [_described(declared, used)]
            _check_lifespan_dependant(
                used, overrides=overrides, chain=chain, checked=checked
            )
        if "state" not in scope:
            raise FastAPIError(
                "The server does not support lifespan state, which lifespan-scoped "
                "dependencies need: use a server that supports it."
            )
        values = await _set_up_values(declarations, teardowns)
        scope["state"][_LIFESPAN_STATE_KEY, id(app)] = values
    state = scope.get("state", {})
    for path, mounted_app in mounted_apps:
        if (_LIFESPAN_STATE_KEY, id(mounted_app)) not in state:
            for declared, _, _ in _declarations(mounted_app, []).values():
                raise FastAPIError(
                    f'The app mounted at "{path}" declares the lifespan-scoped '
                    f'dependency "{_dependency_name(declared.call)}", but its '
                    "lifespan did not run. Run the mounted app's lifespan from this "
                    "app's lifespan and yield its state, so that its requests get it."
                )


async def _tear_down(teardowns: _Teardowns) -> list[BaseException]:
    """Exit what was set up in reverse order, each as if nothing failed."""
    errors: list[BaseException] = []
    while teardowns:
        name, context_manager = teardowns.pop()
        try:
            await context_manager.__aexit__(None, None, None)
        except BaseException as error:
            errors.append(_named(error, name))
    return errors


def _attached(error: BaseException, others: list[BaseException]) -> BaseException:
    """`error`, with the other teardown errors logged and noted on it."""
    for other in others:
        logger.error("Lifespan dependency teardown failed", exc_info=other)
        error.add_note(f"Another lifespan dependency teardown failed: {other!r}")
    return error


async def _cancelled_by_dependency(error: BaseException) -> bool:
    """
    Whether `error` is a cancellation by a cancel scope that has exited since, the
    task group of a dependency whose child task crashed, rather than by something
    still in effect.
    """
    if not isinstance(error, anyio.get_cancelled_exc_class()):
        return False
    try:
        await anyio.lowlevel.checkpoint_if_cancelled()
    except anyio.get_cancelled_exc_class():
        return False
    try:
        task = asyncio.current_task()
    except RuntimeError:  # Not asyncio.
        return True
    return task is None or task.cancelling() == 0


def lifespan_dependencies_app(app: Any, lifespan_app: ASGIApp) -> ASGIApp:
    """
    Wrap the ASGI lifespan of `app`: set its lifespan-scoped dependencies up when
    its own startup is complete, tear them down when the server asks for shutdown.
    """

    async def run(scope: Scope, receive: Receive, send: Send) -> None:
        teardowns: _Teardowns = []
        started = False
        # A failure of ours, reported once the app's own lifespan has unwound (as at
        # a shutdown, whatever it does with exceptions).
        failure: BaseException | None = None

        async def tear_down() -> list[BaseException]:
            scope.get("state", {}).pop((_LIFESPAN_STATE_KEY, id(app)), None)
            return await _tear_down(teardowns)

        async def receive_lifespan() -> Message:
            nonlocal failure
            if failure is None:
                try:
                    message = await receive()
                except BaseException as error:
                    errors = await tear_down()
                    if not errors or not await _cancelled_by_dependency(error):
                        raise _attached(error, errors)
                    # As the app's own lifespan would report its task group's error.
                    failure = _attached(errors[0], errors[1:])
                else:
                    if message["type"] == "lifespan.shutdown":
                        errors = await tear_down()
                        if errors:
                            failure = _attached(errors[0], errors[1:])
                    return message
            return {"type": "lifespan.shutdown"}

        async def send_lifespan(message: Message) -> None:
            nonlocal started, failure
            if message["type"] == "lifespan.startup.complete":
                try:
                    await _set_up(app, scope, teardowns)
                except BaseException as error:
                    errors = await tear_down()
                    if errors and await _cancelled_by_dependency(error):
                        error, errors = errors[0], errors[1:]
                    elif not isinstance(error, Exception):
                        raise _attached(error, errors)
                    failure = _attached(error, errors)
                    return
                started = True
                try:
                    await send(message)
                except BaseException as error:
                    # The server is gone before the run started: nothing will ask
                    # for shutdown.
                    raise _attached(error, await tear_down())
                return
            if failure is not None and message["type"].startswith("lifespan.shut"):
                if message["type"] == "lifespan.shutdown.failed":
                    failure.add_note(f"The app's shutdown failed: {sys.exception()!r}")
                phase = "shutdown" if started else "startup"
                text = "".join(traceback.format_exception(failure))
                await send({"type": f"lifespan.{phase}.failed", "message": text})
                raise failure
            await send(message)

        await lifespan_app(scope, receive_lifespan, send_lifespan)

    return run
