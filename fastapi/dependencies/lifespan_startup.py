"""
How the lifespan-scoped dependencies of a run start and stop.

Every set-up and teardown is visible: a debug record on the `fastapi` logger for
each (the dependency, the phase, how long it took, how it ended) and, when the
app's native telemetry traces, a span for each, under one span for the startup
and one for the shutdown.

With `FastAPI(concurrent_lifespan_dependencies=True)`, the dependencies are set
up concurrently: each starts once everything it depends on is ready, in a task
of its own that later runs its teardown too, and a dependency is torn down only
after everything that depends on it has been.
"""

import time
from collections.abc import Awaitable, Callable, Hashable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import anyio.abc
from fastapi.dependencies.lifespan import (
    _Declaration,
    _describe,
    _LifespanRun,
    _named,
    _note_failed_set_up,
    _replacement,
    _Solver,
    _uses_cache,
    lifespan_key,
)
from fastapi.dependencies.lifespan import (
    lifespan_dependencies_app as _lifespan_dependencies_app,
)
from fastapi.dependencies.models import Dependant, _impartial
from fastapi.logger import logger
from fastapi.telemetry._api import _exception_type
from opentelemetry import trace
from opentelemetry.trace import Span, StatusCode, Tracer
from starlette.types import ASGIApp, Receive, Scope, Send

_SET_UP = "set_up"
_TEAR_DOWN = "tear_down"


def _qualified_name(call: Callable[..., Any] | None) -> str:
    assert call is not None
    call = _impartial(call)
    module = getattr(call, "__module__", None) or type(call).__module__
    qualname = getattr(call, "__qualname__", None) or type(call).__qualname__
    return f"{module}.{qualname}"


def _tracer(app: Any) -> Tracer | None:
    """The app's native telemetry tracer, if it traces."""
    native = getattr(app, "_native_telemetry", None)
    if native is None or not native.config["tracing"] or not native.enabled():
        return None
    provider = native.config["tracer_provider"] or trace.get_tracer_provider()
    tracer: Tracer = native._get_tracer(provider=provider)
    return tracer


@dataclass(slots=True)
class _Observer:
    """Log (and trace) each set-up and teardown of one run."""

    tracer: Tracer | None
    # The span of the phase in progress (startup or shutdown), if tracing.
    phase_span: Span | None = None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """The startup or the shutdown of the run's dependencies, as one span."""
        if self.tracer is None:
            yield
            return
        with self.tracer.start_as_current_span(
            f"fastapi.lifespan.{name}",
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            self.phase_span = span
            try:
                yield
            except BaseException as error:
                _record_error(span, error)
                raise
            finally:
                self.phase_span = None

    async def observe(
        self, call: Any, phase: str, step: Callable[[], Awaitable[Any]]
    ) -> Any:
        """Run one set-up or teardown of `call`, logged and traced."""
        name = _qualified_name(call)
        span = None
        if self.tracer is not None:
            span = self.tracer.start_span(
                name,
                context=trace.set_span_in_context(self.phase_span)
                if self.phase_span is not None
                else None,
                attributes={
                    "code.function.name": name,
                    "fastapi.lifespan.phase": phase,
                },
            )
        outcome = "ok"
        started = time.perf_counter()
        try:
            if span is None:
                return await step()
            # Current during the step: what it traces is nested under it.
            with trace.use_span(
                span,
                record_exception=False,
                set_status_on_exception=False,
            ):
                return await step()
        except BaseException as error:
            outcome = f"failed: {_exception_type(error)}"
            if span is not None:
                _record_error(span, error)
            raise
        finally:
            duration = time.perf_counter() - started
            if span is not None and span.is_recording():
                span.end()
            logger.debug(
                "Lifespan dependency %s %s: %s (%.1f ms)",
                name,
                phase.replace("_", " "),
                outcome,
                duration * 1000,
                extra={
                    "lifespan_dependency": name,
                    "lifespan_phase": phase,
                    "duration": duration,
                    "outcome": outcome,
                },
            )


def _record_error(span: Span, error: BaseException) -> None:
    span.record_exception(error)
    span.set_attribute("error.type", _exception_type(error))
    span.set_status(StatusCode.ERROR)


class _ObservedExit(AbstractAsyncContextManager[Any]):
    """An entered dependency whose exit is logged and traced."""

    def __init__(
        self,
        context_manager: AbstractAsyncContextManager[Any],
        *,
        call: Any,
        observer: _Observer,
    ) -> None:
        self.context_manager = context_manager
        self.call = call
        self.observer = observer

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        result: bool | None = await self.observer.observe(
            self.call, _TEAR_DOWN, partial(self.context_manager.__aexit__, *exc_info)
        )
        return result


@dataclass(slots=True)
class _ObservedSolver(_Solver):
    observer: _Observer = field(default_factory=lambda: _Observer(tracer=None))

    async def _enter(self, dependant: Dependant, values: dict[str, Any]) -> Any:
        entered = len(self.teardowns)
        value = await self.observer.observe(
            dependant.call, _SET_UP, partial(_Solver._enter, self, dependant, values)
        )
        if len(self.teardowns) > entered:
            name, context_manager = self.teardowns[-1]
            self.teardowns[-1] = (
                name,
                _ObservedExit(
                    context_manager, call=dependant.call, observer=self.observer
                ),
            )
        return value


@dataclass(slots=True)
class _ObservedRun(_LifespanRun):
    """A run whose dependencies start one after the other, observed."""

    observer: _Observer = field(default_factory=lambda: _Observer(tracer=None))

    def __post_init__(self) -> None:
        self.observer = _Observer(tracer=_tracer(self.app))

    async def _set_up_values(
        self, declarations: dict[Hashable, _Declaration]
    ) -> dict[Hashable, Any]:
        with self.observer.phase("startup"):
            return await self._start(declarations)

    def _solver(self) -> _Solver:
        return _ObservedSolver(teardowns=self.teardowns, observer=self.observer)

    async def _start(
        self, declarations: dict[Hashable, _Declaration]
    ) -> dict[Hashable, Any]:
        return await _LifespanRun._set_up_values(self, declarations)

    async def _tear_down_values(self) -> list[BaseException]:
        with self.observer.phase("shutdown"):
            return await self._stop()

    async def _stop(self) -> list[BaseException]:
        return await _LifespanRun._tear_down_values(self)


@dataclass(eq=False, slots=True)
class _Node:
    """One dependency instance of a concurrent run, set up in a task of its own."""

    name: str
    # Whether it is a lifespan-scoped dependency (not an unscoped sub-dependency).
    lifespan: bool
    # Its sub-dependencies, (parameter name, node), and the nodes that need it.
    subs: list[tuple[str | None, "_Node"]] = field(default_factory=list)
    dependents: list["_Node"] = field(default_factory=list)
    ready: anyio.Event = field(default_factory=anyio.Event)
    set_up_scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    value: Any = None
    ok: bool = False
    # Set up, with something to exit at shutdown.
    has_exit: bool = False
    # Dependents set up and not yet torn down.
    pending: int = 0
    may_exit: anyio.Event = field(default_factory=anyio.Event)
    exited: anyio.Event = field(default_factory=anyio.Event)


@dataclass(slots=True)
class _Graph:
    """The dependencies of one concurrent run: their tasks and their order."""

    task_group: anyio.abc.TaskGroup
    observer: _Observer
    # In a valid set-up order: each after its sub-dependencies.
    nodes: list[_Node] = field(default_factory=list)
    instances: dict[Hashable, _Node] = field(default_factory=dict)
    cache: dict[Any, _Node] = field(default_factory=dict)
    set_up_errors: list[BaseException] = field(default_factory=list)
    tear_down_errors: list[BaseException] = field(default_factory=list)

    def lifespan_node(
        self, dependant: Dependant, key: Hashable, overrides: dict[Any, Any]
    ) -> _Node:
        used = _replacement(dependant, overrides)
        instance_key = used.call if _uses_cache(dependant) else key
        node = self.instances.get(instance_key)
        if node is None:
            name = _describe(dependant, used)
            node = self.instances[instance_key] = self._start(
                used, overrides, name=name, lifespan=True
            )
        return node

    def _unscoped_node(self, dependant: Dependant, overrides: dict[Any, Any]) -> _Node:
        used = _replacement(dependant, overrides)
        if dependant.use_cache and used.call in self.cache:
            return self.cache[used.call]
        node = self._start(used, overrides, name=_describe(dependant, used))
        self.cache.setdefault(used.call, node)
        return node

    def _start(
        self,
        dependant: Dependant,
        overrides: dict[Any, Any],
        *,
        name: str,
        lifespan: bool = False,
    ) -> _Node:
        node = _Node(name=name, lifespan=lifespan)
        for sub_dependant in dependant.dependencies:
            if sub_dependant.scope == "lifespan":
                key = lifespan_key(sub_dependant, parent=dependant)
                sub = self.lifespan_node(sub_dependant, key, overrides)
            else:
                sub = self._unscoped_node(sub_dependant, overrides)
            node.subs.append((sub_dependant.name, sub))
            sub.dependents.append(node)
        self.nodes.append(node)
        self.task_group.start_soon(self._run, node, dependant)
        return node

    async def _run(self, node: _Node, dependant: Dependant) -> None:
        """Set the dependency up once its sub-dependencies are; later, exit it."""
        solver = _ObservedSolver(teardowns=[], observer=self.observer)
        # Cancelled only while it is being set up. Its set-up and teardown run
        # in it, so a generator may open a task group around its yield.
        with node.set_up_scope:
            try:
                values: dict[str, Any] = {}
                for name, sub in node.subs:
                    await sub.ready.wait()
                    if not sub.ok:
                        # A dependency failed: that is the error reported.
                        return
                    if name is not None:
                        values[name] = sub.value
                node.value = await solver._enter(dependant, values)
                node.ok = True
                node.has_exit = bool(solver.teardowns)
                for _, sub in node.subs:
                    sub.pending += 1
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException as error:
                self._fail(node, error)
                return
            finally:
                node.ready.set()
            if not node.has_exit:
                return
            name, context_manager = solver.teardowns[0]
            # Not interrupted by a cancellation of the lifespan, so that its
            # dependents are still torn down first; the teardown itself is.
            with anyio.CancelScope(shield=True):
                await node.may_exit.wait()
            try:
                await context_manager.__aexit__(None, None, None)
            except BaseException as error:
                self.tear_down_errors.append(_named(error, name))
            self._release(node)

    def _fail(self, node: _Node, error: BaseException) -> None:
        """Cancel the set-ups still running; name the lifespan dependency."""
        if isinstance(error, Exception):
            _note_failed_set_up(error, self._lifespan_name(node))
        self.set_up_errors.append(error)
        self._cancel_set_ups()

    def _cancel_set_ups(self) -> None:
        for node in self.nodes:
            if not node.ready.is_set():
                node.set_up_scope.cancel()

    def _lifespan_name(self, node: _Node) -> str:
        """The lifespan dependency whose set-up `node` is part of."""
        pending = [node]
        while not pending[0].lifespan:
            pending.extend(pending.pop(0).dependents)
        return pending[0].name

    async def wait_set_up(self) -> None:
        try:
            for node in self.nodes:
                await node.ready.wait()
        except BaseException:
            self._cancel_set_ups()
            raise
        if self.set_up_errors:
            error, *others = self.set_up_errors
            for other in others:
                error.add_note(f"Another lifespan dependency set-up failed: {other!r}")
            raise error

    def _exit(self, node: _Node) -> None:
        """Tear `node` down: everything that depends on it has been."""
        if node.has_exit:
            node.may_exit.set()
        else:
            self._release(node)

    def _release(self, node: _Node) -> None:
        node.exited.set()
        for _, sub in node.subs:
            sub.pending -= 1
            if sub.pending == 0:
                self._exit(sub)

    async def tear_down(self) -> list[BaseException]:
        """Exit every dependency set up, dependents first, concurrently."""
        done = [node for node in self.nodes if node.ok]
        # Those nothing depends on; the others follow as their dependents end.
        for node in [node for node in done if node.pending == 0]:
            self._exit(node)
        # Each teardown runs in its dependency's task, which a cancellation of
        # the lifespan interrupts too: this wait ends with them.
        with anyio.CancelScope(shield=True):
            for node in done:
                await node.exited.wait()
        return self.tear_down_errors

    def abandon(self) -> None:
        """
        The lifespan ended without tearing the run down: exit what was set up
        anyway (in no particular order), so that every task ends.
        """
        for node in self.nodes:
            node.may_exit.set()


@dataclass(slots=True)
class _ConcurrentRun(_ObservedRun):
    """A run whose dependencies start and stop concurrently."""

    task_group: anyio.abc.TaskGroup | None = None
    # The graphs of the lifespan's runs, to end their tasks whatever happens.
    graphs: list[_Graph] = field(default_factory=list)
    graph: _Graph | None = None

    async def _start(
        self, declarations: dict[Hashable, _Declaration]
    ) -> dict[Hashable, Any]:
        assert self.task_group is not None
        self.graph = _Graph(task_group=self.task_group, observer=self.observer)
        self.graphs.append(self.graph)
        roots = {
            key: self.graph.lifespan_node(dependant, key, overrides)
            for key, (dependant, overrides) in declarations.items()
        }
        await self.graph.wait_set_up()
        return {key: node.value for key, node in roots.items()}

    async def _stop(self) -> list[BaseException]:
        assert self.graph is not None
        return await self.graph.tear_down()


def lifespan_dependencies_app(app: Any, lifespan_app: ASGIApp) -> ASGIApp:
    """
    Wrap the ASGI lifespan of `app` to run its lifespan-scoped dependencies,
    observed, and concurrently if the app asks for it.
    """
    if not getattr(app, "concurrent_lifespan_dependencies", False):
        return _lifespan_dependencies_app(
            app, lifespan_app, lifespan_run_class=_ObservedRun
        )

    async def run(scope: Scope, receive: Receive, send: Send) -> None:
        error: BaseException | None = None
        graphs: list[_Graph] = []
        try:
            async with anyio.create_task_group() as task_group:
                wrapped = _lifespan_dependencies_app(
                    app,
                    lifespan_app,
                    lifespan_run_class=partial(
                        _ConcurrentRun, task_group=task_group, graphs=graphs
                    ),
                )
                try:
                    await wrapped(scope, receive, send)
                finally:
                    for graph in graphs:
                        graph.abandon()
        except BaseExceptionGroup as group:
            # The dependencies' tasks keep their errors: this is the lifespan's.
            error = group.exceptions[0]
        if error is not None:
            raise error

    return run
