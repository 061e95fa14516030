"""
How the lifespan-scoped dependencies of a run start and stop.

Every set-up and teardown is visible: a debug record on the `fastapi` logger for
each (the dependency, the phase, how long it took, how it ended) and, when the
app's native telemetry traces, a span for each, under one span for the startup
and one for the shutdown.

With `FastAPI(concurrent_lifespan_dependencies=True)`, the dependencies are set
up concurrently: each starts once everything it depends on is ready, and a
dependency is torn down only after everything that depends on it has been. A
generator runs in a task of its own, which later runs its teardown too; the
others are called one after the other by a starter task as long as each returns
without waiting, so that many instant ones cost about what they cost one after
the other, and one that waits keeps that task while a new one goes on.
"""

import time
import types
from collections import deque
from collections.abc import (
    Awaitable,
    Callable,
    Generator,
    Hashable,
    Iterator,
)
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import anyio.abc
from fastapi.concurrency import run_in_threadpool
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
from fastapi.dependencies.models import (
    Dependant,
    _impartial,
    _is_async_gen_callable,
    _is_coroutine_callable,
    _is_gen_callable,
)
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


@types.coroutine
def _resume(steps: Generator[Any, Any, Any], suspended_at: Any) -> Any:
    """
    Await a coroutine (or generator-based one) that was already stepped and
    suspended (at `suspended_at`): the rest of what awaiting it would have
    done, in the task that stepped it, whatever the async backend.
    """
    yielded = suspended_at
    while True:
        # What the task sends (or throws: a cancellation) goes on to `steps`.
        try:
            sent = yield yielded
        except BaseException as error:
            step = partial(steps.throw, error)
        else:
            step = partial(steps.send, sent)
        try:
            yielded = step()
        except StopIteration as done:
            return done.value


def _set_up_step(
    call: Callable[..., Any] | None, values: dict[str, Any]
) -> Callable[[], Awaitable[Any]]:
    """The call of a dependency without teardown (as `_Solver._enter` makes it)."""
    assert call is not None
    if _is_coroutine_callable(call):
        return partial(call, **values)
    return partial(run_in_threadpool, call, **values)


@dataclass(eq=False, slots=True)
class _Node:
    """One dependency instance of a concurrent run."""

    # The dependency as declared, and the one that runs (its override, if any).
    declared: Dependant
    used: Dependant
    # Whether it is a lifespan-scoped dependency (not an unscoped sub-dependency).
    lifespan: bool
    # A generator: its set-up and teardown run in a task of its own. The others
    # are called one after the other by a starter task, and one that has to wait
    # keeps that task (as if it were its own) while a new one goes on.
    own_task: bool
    # Its sub-dependencies, (parameter name, node), and the nodes that need it.
    # (Empty tuples until there is one: many nodes have none, and fewer objects
    # for the garbage collector to track make a startup with many faster.)
    subs: list[tuple[str | None, "_Node"]] | tuple[()] = ()
    dependents: list["_Node"] | tuple[()] = ()
    # Sub-dependencies not set up yet: it starts when none is left.
    waiting: int = 0
    value: Any = None
    ok: bool = False
    # Set up, with something to exit at shutdown: its task waits for this event.
    may_exit: anyio.Event | None = None
    # Dependents set up and not yet torn down.
    pending: int = 0

    @property
    def name(self) -> str:
        return _describe(self.declared, self.used)

    def values(self) -> dict[str, Any]:
        if not self.subs:
            return {}
        return {name: sub.value for name, sub in self.subs if name is not None}


@dataclass(slots=True)
class _Graph:
    """The dependencies of one concurrent run: their tasks and their order."""

    task_group: anyio.abc.TaskGroup
    observer: _Observer
    # In a valid set-up order: each after its sub-dependencies.
    nodes: list[_Node] = field(default_factory=list)
    instances: dict[Hashable, _Node] = field(default_factory=dict)
    cache: dict[Any, _Node] = field(default_factory=dict)
    # The dependencies without teardown ready to start, and the cancel scope of
    # the starter task going through them (None when no task is).
    runnable: deque[_Node] = field(default_factory=deque)
    starter: anyio.CancelScope | None = None
    # Whether nothing more may start (a set-up failed, or the startup ended).
    stopped: bool = False
    # The cancel scopes of the set-ups that are waiting for something.
    running: set[anyio.CancelScope] = field(default_factory=set)
    # Tasks that may still set something up, and nodes set up.
    tasks: int = 0
    ready: int = 0
    settled: anyio.Event = field(default_factory=anyio.Event)
    tearing_down: bool = False
    # Dependencies set up with something to exit that are not torn down yet.
    exits: int = 0
    exited: anyio.Event = field(default_factory=anyio.Event)
    set_up_errors: list[BaseException] = field(default_factory=list)
    tear_down_errors: list[BaseException] = field(default_factory=list)

    def lifespan_node(
        self, dependant: Dependant, key: Hashable, overrides: dict[Any, Any]
    ) -> _Node:
        used = _replacement(dependant, overrides)
        instance_key = used.call if _uses_cache(dependant) else key
        node = self.instances.get(instance_key)
        if node is None:
            node = self.instances[instance_key] = self._add(
                dependant, used, overrides, lifespan=True
            )
        return node

    def _unscoped_node(self, dependant: Dependant, overrides: dict[Any, Any]) -> _Node:
        used = _replacement(dependant, overrides)
        if dependant.use_cache and used.call in self.cache:
            return self.cache[used.call]
        node = self._add(dependant, used, overrides)
        self.cache.setdefault(used.call, node)
        return node

    def _add(
        self,
        declared: Dependant,
        used: Dependant,
        overrides: dict[Any, Any],
        *,
        lifespan: bool = False,
    ) -> _Node:
        call = used.call
        own_task = _is_async_gen_callable(call) or _is_gen_callable(call)
        # (Positional: a node per dependency, and keywords cost more here.)
        node = _Node(declared, used, lifespan, own_task)
        if used.dependencies:
            node.subs = subs = []
            for sub_dependant in used.dependencies:
                if sub_dependant.scope == "lifespan":
                    key = lifespan_key(sub_dependant, parent=used)
                    sub = self.lifespan_node(sub_dependant, key, overrides)
                else:
                    sub = self._unscoped_node(sub_dependant, overrides)
                subs.append((sub_dependant.name, sub))
                if sub.dependents:
                    sub.dependents.append(node)
                else:
                    sub.dependents = [node]
            node.waiting = len(subs)
        else:
            # Needs none of the others: it starts once the graph is built (its
            # task, or the starter task, runs at the next await).
            self._schedule(node)
        self.nodes.append(node)
        return node

    def _schedule(self, node: _Node) -> None:
        if node.own_task:
            self.tasks += 1
            self.task_group.start_soon(self._run, node)
            return
        self.runnable.append(node)
        if self.starter is None:
            self._new_starter()

    def _new_starter(self) -> None:
        self.starter = anyio.CancelScope()
        self.tasks += 1
        self.task_group.start_soon(self._start_set_ups, self.starter)

    async def _start_set_ups(self, scope: anyio.CancelScope) -> None:
        """
        Call the runnable dependencies without teardown one after the other, in
        this task, while each returns without waiting: no task each for those
        that never wait. One that waits keeps this task, and a new one goes on.
        """
        with scope:
            try:
                set_ups = self._set_ups_in_turn(scope)
                try:
                    suspended_at = set_ups.send(None)
                except StopIteration:
                    return
                # One waits: this task stays with it (what it entered, a cancel
                # scope say, belongs to this task), a new one goes on.
                self.starter = None
                if self.runnable:
                    self._new_starter()
                self.running.add(scope)
                try:
                    await _resume(set_ups, suspended_at)
                finally:
                    self.running.discard(scope)
            finally:
                if self.starter is scope:
                    self.starter = None
                self.tasks -= 1
                self._check_settled()

    @types.coroutine
    def _set_ups_in_turn(self, scope: anyio.CancelScope) -> Generator[Any, Any, None]:
        """
        The set-ups of the starter task with `scope`, one after the other: it
        yields only when one waits (its await's own yield), and then ends with
        that one.
        """
        while self.runnable and not self.stopped:
            node = self.runnable.popleft()
            call = node.used.call
            try:
                value = yield from self.observer.observe(
                    call, _SET_UP, _set_up_step(call, node.values())
                )
            except BaseException as error:
                self._fail(node, error)
                if self.starter is scope:
                    # It failed without waiting: nothing more starts.
                    continue
                if isinstance(error, anyio.get_cancelled_exc_class()):
                    raise
                return
            self._set_up(node, value)
            if self.starter is not scope:
                return

    async def _run(self, node: _Node) -> None:
        """Set a generator up; once its dependents are torn down, exit it."""
        solver = _ObservedSolver(teardowns=[], observer=self.observer)
        # Its set-up and teardown run in it, so a generator may open a task group
        # around its yield.
        with anyio.CancelScope() as scope:
            try:
                if self.stopped or not await self._await_set_up(
                    node, scope, solver._enter(node.used, node.values())
                ):
                    return
            finally:
                self.tasks -= 1
                self._check_settled()
            name, context_manager = solver.teardowns[0]
            if not node.ok:
                # Set up after the shutdown began (its set-up outlived its
                # cancellation): nothing depends on it, exit it now.
                await self._tear_down_one(name, context_manager)
                return
            node.may_exit = anyio.Event()
            self.exits += 1
            # Not interrupted by a cancellation of the lifespan, so that its
            # dependents are still torn down first; the teardown itself is.
            with anyio.CancelScope(shield=True):
                await node.may_exit.wait()
            await self._tear_down_one(name, context_manager)
            self._release(node)

    async def _await_set_up(
        self, node: _Node, scope: anyio.CancelScope, set_up: Awaitable[Any]
    ) -> bool:
        """
        Wait for the set-up of `node`, which a failure of another cancels (with
        `scope`, the cancel scope of its task); whether it succeeded.
        """
        self.running.add(scope)
        try:
            value = await set_up
        except BaseException as error:
            self._fail(node, error)
            if isinstance(error, anyio.get_cancelled_exc_class()):
                raise
            return False
        finally:
            self.running.discard(scope)
        self._set_up(node, value)
        return True

    async def _tear_down_one(
        self, name: str, context_manager: AbstractAsyncContextManager[Any]
    ) -> None:
        try:
            await context_manager.__aexit__(None, None, None)
        except BaseException as error:
            self.tear_down_errors.append(_named(error, name))

    def _set_up(self, node: _Node, value: Any) -> None:
        """`node` is ready: start what was waiting for it."""
        node.value = value
        self.ready += 1
        # Once the shutdown began, it is torn down on its own (see `_run`).
        if not self.tearing_down:
            node.ok = True
            for _, sub in node.subs:
                sub.pending += 1
        for dependent in node.dependents:
            dependent.waiting -= 1
            if dependent.waiting == 0 and not self.stopped:
                self._schedule(dependent)
        self._check_settled()

    def _fail(self, node: _Node, error: BaseException) -> None:
        """Cancel the set-ups still running; name the lifespan dependency."""
        if self.stopped and isinstance(error, anyio.get_cancelled_exc_class()):
            # Cancelled because of the failure (or the end) of the startup.
            return
        if isinstance(error, Exception):
            _note_failed_set_up(error, self._lifespan_name(node))
        self.set_up_errors.append(error)
        self._stop()

    def _stop(self) -> None:
        """Start nothing more; cancel the set-ups still running."""
        self.stopped = True
        self.runnable.clear()
        for scope in self.running:
            scope.cancel()
        self._check_settled()

    def _check_settled(self) -> None:
        if self.ready == len(self.nodes) or (self.stopped and self.tasks == 0):
            self.settled.set()

    def _lifespan_name(self, node: _Node) -> str:
        """The lifespan dependency whose set-up `node` is part of."""
        pending = [node]
        while not pending[0].lifespan:
            pending.extend(pending.pop(0).dependents)
        return pending[0].name

    async def wait_set_up(self) -> None:
        try:
            await self.settled.wait()
        except BaseException:
            self._stop()
            raise
        if self.set_up_errors:
            error, *others = self.set_up_errors
            for other in others:
                error.add_note(f"Another lifespan dependency set-up failed: {other!r}")
            raise error

    def _exit(self, node: _Node) -> None:
        """Tear `node` down: everything that depends on it has been."""
        if node.may_exit is not None:
            node.may_exit.set()
        else:
            self._release(node)

    def _release(self, node: _Node) -> None:
        """`node` is torn down: exit the sub-dependencies nothing else needs."""
        released = [node]
        while released:
            node = released.pop()
            if node.may_exit is not None:
                self.exits -= 1
                if self.exits == 0:
                    self.exited.set()
            for _, sub in node.subs:
                sub.pending -= 1
                if sub.pending == 0:
                    if sub.may_exit is not None:
                        sub.may_exit.set()
                    else:
                        released.append(sub)

    async def tear_down(self) -> list[BaseException]:
        """Exit every dependency set up, dependents first, concurrently."""
        self.tearing_down = True
        done = [node for node in self.nodes if node.ok]
        # Those nothing depends on; the others follow as their dependents end.
        for node in [node for node in done if node.pending == 0]:
            self._exit(node)
        if self.exits:
            # Each teardown runs in its dependency's task, which a cancellation
            # of the lifespan interrupts too: this wait ends with them.
            with anyio.CancelScope(shield=True):
                await self.exited.wait()
        return self.tear_down_errors

    def abandon(self) -> None:
        """
        The lifespan ended without tearing the run down: exit what was set up
        anyway (in no particular order), so that every task ends.
        """
        for node in self.nodes:
            if node.may_exit is not None:
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
