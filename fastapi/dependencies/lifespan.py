import sys
import traceback
from collections.abc import Hashable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

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
    _lifespan_replacement,
    get_parameterless_sub_dependant,
)
from fastapi.exceptions import FastAPIError
from fastapi.logger import logger
from fastapi.routing import APIRoute, APIRouter, APIWebSocketRoute, _IncludedRouter
from starlette.routing import Mount, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# A lifespan-scoped dependency and the overrides provider of its requests.
_Declaration = tuple[Dependant, Any]
_Teardowns = list[tuple[str, AbstractAsyncContextManager[Any]]]
_SET_UP_NOTE = "while setting up the lifespan-scoped dependency"


def _declare(
    declarations: dict[Hashable, _Declaration], dependant: Dependant, provider: Any
) -> None:
    if dependant.scope == "lifespan":
        key = (dependant.call, id(provider))
        declarations.setdefault(key, (dependant, provider))
        return
    overrides = getattr(provider, "dependency_overrides", {})
    for sub_dependant in dependant.dependencies:
        if sub_dependant.scope != "lifespan":
            sub_dependant = _lifespan_replacement(sub_dependant, overrides)
        _declare(declarations, sub_dependant, provider)


def _declare_routes(
    declarations: dict[Hashable, _Declaration], router: Router, provider: Any
) -> None:
    # Lifespan-scoped entries of `dependencies=` lists are set up even without
    # routes. A mounted router has no lifespan of its own: it belongs to this run.
    listed = list(router.dependencies) if isinstance(router, APIRouter) else []
    for route in router.routes:
        if isinstance(route, _IncludedRouter):
            listed += route.include_context.dependencies
            _declare_routes(declarations, route.original_router, provider)
        elif isinstance(route, (APIRoute, APIWebSocketRoute)):
            _declare(declarations, route.dependant, provider)
        elif isinstance(route, Mount) and isinstance(route.app, Router):
            own_provider = getattr(route.app, "dependency_overrides_provider", None)
            _declare_routes(declarations, route.app, own_provider)
    for depends in listed:
        if depends.scope == "lifespan":
            dependant = get_parameterless_sub_dependant(depends=depends, path="")
            _declare(declarations, dependant, provider)


def _note_set_up_failure(
    error: Exception, dependant: Dependant, used: Dependant
) -> None:
    # Only the innermost lifespan-scoped dependency: the one that failed.
    if not any(
        note.startswith(_SET_UP_NOTE) for note in getattr(error, "__notes__", [])
    ):
        error.add_note(f'{_SET_UP_NOTE} "{_described(dependant, used)}"')


@dataclass(slots=True)
class _Solver:
    teardowns: _Teardowns
    # One per callable that runs.
    instances: dict[Hashable, Any] = field(default_factory=dict)
    cache: dict[Any, Any] = field(default_factory=dict)

    def slot(
        self, dependant: Dependant, overrides: dict[Any, Any]
    ) -> tuple[dict[Hashable, Any], Hashable, Dependant]:
        used = _lifespan_replacement(dependant, overrides)
        if dependant.scope == "lifespan":
            return self.instances, used.call, used
        return self.cache, used.call, used

    async def solve(self, dependant: Dependant, overrides: dict[Any, Any]) -> Any:
        values, key, used = self.slot(dependant, overrides)
        if key in values and (dependant.use_cache or values is self.instances):
            return values[key]
        try:
            sub_values = {}
            for sub_dependant in used.dependencies:
                value = await self.solve(sub_dependant, overrides)
                if sub_dependant.name is not None:
                    sub_values[sub_dependant.name] = value
            value = await self._enter(used, sub_values)
        except Exception as error:
            if dependant.scope == "lifespan":
                _note_set_up_failure(error, dependant, used)
            raise
        values.setdefault(key, value)
        return value

    async def _enter(self, dependant: Dependant, values: dict[str, Any]) -> Any:
        call = dependant.call
        assert call is not None
        context_manager: AbstractAsyncContextManager[Any]
        if _is_async_gen_callable(call):
            context_manager = asynccontextmanager(call)(**values)
        elif _is_gen_callable(call):
            cm = contextmanager(call)(**values)
            context_manager = contextmanager_in_threadpool(cm)
        elif _is_coroutine_callable(call):
            return await call(**values)
        else:
            return await run_in_threadpool(call, **values)
        value = await context_manager.__aenter__()
        self.teardowns.append((_dependency_name(call), context_manager))
        return value


async def _set_up_values(
    declarations: dict[Hashable, _Declaration], teardowns: _Teardowns
) -> dict[Hashable, tuple[Any, Any]]:
    solver = _Solver(teardowns)
    values = {}
    for key, (declared, provider) in declarations.items():
        overrides = getattr(provider, "dependency_overrides", {})
        value = await solver.solve(declared, overrides)
        values[key] = (overrides.get(declared.call, declared.call), value)
    return values


async def _set_up(app: Any, scope: Scope, teardowns: _Teardowns) -> None:
    declarations: dict[Hashable, _Declaration] = {}
    _declare_routes(declarations, app.router, app.router.dependency_overrides_provider)
    if not declarations:
        return
    # Overrides are only known now: check them before setting anything up.
    checked: set[Hashable] = set()
    for declared, provider in declarations.values():
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


async def _exit(name: str, context_manager: Any) -> BaseException | None:
    try:
        await context_manager.__aexit__(None, None, None)
    except BaseException as error:
        error.add_note(f'while tearing down the lifespan-scoped dependency "{name}"')
        return error
    return None


async def _tear_down(teardowns: _Teardowns) -> list[BaseException]:
    # In reverse order, each as if nothing failed, even if others fail.
    errors = []
    while teardowns:
        if error := await _exit(*teardowns.pop()):
            errors.append(error)
    return errors


def lifespan_dependencies_app(app: Any, lifespan_app: ASGIApp) -> ASGIApp:
    async def run(scope: Scope, receive: Receive, send: Send) -> None:
        teardowns: _Teardowns = []
        started = False
        failure: BaseException | None = None

        async def tear_down(error: BaseException | None, ours: bool) -> None:
            # Our failure is reported once the app's own lifespan has unwound as at
            # a shutdown, whatever it does with exceptions.
            nonlocal failure
            scope.get("state", {}).pop((_LIFESPAN_STATE_KEY, id(app)), None)
            errors = await _tear_down(teardowns)
            if errors and error is None:
                error, ours = errors.pop(0), True
            if error is None:
                return
            for other in errors:
                logger.error("Lifespan dependency teardown failed", exc_info=other)
                error.add_note(
                    f"Another lifespan dependency teardown failed: {other!r}"
                )
            if not ours:
                raise error
            failure = error

        async def receive_lifespan() -> Message:
            if failure is None:
                try:
                    message = await receive()
                except BaseException as error:
                    await tear_down(error, ours=False)
                else:
                    # As Starlette's lifespan, any message after the startup ends it.
                    if started or message["type"] == "lifespan.shutdown":
                        await tear_down(None, ours=True)
                    return message
            return {"type": "lifespan.shutdown"}

        async def send_lifespan(message: Message) -> None:
            nonlocal started
            if message["type"] == "lifespan.startup.complete":
                try:
                    await _set_up(app, scope, teardowns)
                except BaseException as error:
                    await tear_down(error, ours=isinstance(error, Exception))
                    return
                started = True
                try:
                    await send(message)
                except BaseException as error:
                    await tear_down(error, ours=False)  # Nothing will ask for shutdown.
            elif failure is not None and message["type"].startswith("lifespan.shut"):
                if message["type"] == "lifespan.shutdown.failed":
                    failure.add_note(f"The app's shutdown failed: {sys.exception()!r}")
                text = "".join(traceback.format_exception(failure))
                phase = "shutdown" if started else "startup"
                await send({"type": f"lifespan.{phase}.failed", "message": text})
                raise failure
            else:
                await send(message)

        await lifespan_app(scope, receive_lifespan, send_lifespan)

    return run
