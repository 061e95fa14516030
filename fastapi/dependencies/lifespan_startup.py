"""
The fork's layer on lifespan-scoped dependencies (not part of the upstream change).

* Every set-up and teardown of a run is visible: a debug record on the `fastapi`
  logger for each (the dependency, the phase, how long it took, how it ended) and,
  when the app's native telemetry traces, a span for each, under one span for the
  startup and one for the shutdown.
* With `FastAPI(concurrent_lifespan_dependencies=True)`, they run concurrently: each
  starts once everything it depends on is ready and is torn down only after
  everything that depends on it. A generator runs in a task of its own, which later
  runs its teardown too; the others are called one after the other by a starter
  task as long as each returns without waiting, and one that waits keeps that task
  while a new one goes on.

`fastapi.dependencies.lifespan` calls `set_up_values()`, `tear_down()` and
`observed()` (through the fork's patches); `FastAPI.__call__()` wraps the lifespan
with `concurrently()`.
"""

import threading
import time
import types
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Hashable, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    contextmanager,
)
from contextvars import Context, ContextVar, copy_context
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import anyio
import anyio.abc
import anyio.to_thread
from fastapi.concurrency import run_in_threadpool
from fastapi.dependencies.lifespan import (
    _Declaration,
    _exit,
    _note_set_up_failure,
    _Solver,
    _tear_down,
    _Teardowns,
)
from fastapi.dependencies.lifespan import (
    _set_up_values as _set_up_one_after_the_other,
)
from fastapi.dependencies.models import (
    Dependant,
    _impartial,
    _is_async_gen_callable,
    _is_gen_callable,
)
from fastapi.logger import logger
from fastapi.telemetry._api import _exception_type
from opentelemetry import trace
from opentelemetry.trace import Span, StatusCode, Tracer
from starlette.types import ASGIApp, Receive, Scope, Send

_SET_UP = "set_up"
_TEAR_DOWN = "tear_down"
_MISSING = object()


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


def _record_error(span: Span, error: BaseException) -> None:
    span.record_exception(error)
    span.set_attribute("error.type", _exception_type(error))
    span.set_status(StatusCode.ERROR)


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

    def failed(self, errors: list[BaseException]) -> None:
        """The phase failed without raising (teardown errors are raised later)."""
        if errors and self.phase_span is not None:
            _record_error(self.phase_span, errors[0])

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
                span, record_exception=False, set_status_on_exception=False
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


class SyncGenerator(AbstractAsyncContextManager[Any]):
    """
    A sync generator's context manager, entered and exited in the thread pool.
    Its exit waits for the thread that enters it, which goes on when the task
    that waits for it is cancelled natively, and exits it if it was entered. If
    the thread hadn't started when the set-up was cancelled, it never enters.
    """

    def __init__(self, context_manager: AbstractContextManager[Any]) -> None:
        self.context_manager = context_manager
        self.lock = threading.Lock()
        self.started = False
        self.abandoned = False
        self.entering = threading.Event()
        self.entered = False

    def _enter(self) -> Any:
        with self.lock:
            if self.abandoned:  # Its set-up's task is gone: nothing to set up.
                return None
            self.started = True
        try:
            value = self.context_manager.__enter__()
            self.entered = True
            return value
        finally:
            self.entering.set()

    async def __aenter__(self) -> Any:
        return await run_in_threadpool(self._enter)

    async def __aexit__(self, *exc_info: Any) -> None:
        with self.lock:
            if not self.started:
                self.abandoned = True
                return
        finished = threading.Event()
        exiting = False
        errors: list[BaseException] = []

        def exit_once() -> None:
            # Each attempt runs this; the first that starts exits, the others
            # wait for it (an attempt cancelled natively may start later, or never).
            nonlocal exiting
            with self.lock:
                first, exiting = not exiting, True
            if not first:
                finished.wait()
                return
            try:
                self.entering.wait()
                if self.entered:
                    self.context_manager.__exit__(None, None, None)
            except BaseException as error:
                errors.append(error)
            finally:
                finished.set()

        # Not waiting for the thread pool's capacity (as upstream's teardowns),
        # and shielded: a thread doesn't stop for a cancellation anyway.
        cancelled: BaseException | None = None
        with anyio.CancelScope(shield=True):
            while not finished.is_set():
                try:
                    await anyio.to_thread.run_sync(
                        exit_once, limiter=anyio.CapacityLimiter(1)
                    )
                except anyio.get_cancelled_exc_class() as error:
                    # asyncio's task.cancel() goes through a shield, not through
                    # the thread: the dependencies of this one exit after it.
                    cancelled = error
        if errors:
            raise errors[0]
        if cancelled is not None:
            raise cancelled


@dataclass(slots=True)
class _Run:
    """What the fork keeps of one lifespan run."""

    observer: _Observer
    graph: "_Graph | None" = None


# The run of the lifespan in progress in this task (set at startup, read at
# shutdown and in the tasks the run starts).
_current_run: ContextVar[_Run | None] = ContextVar("fastapi_lifespan_run", default=None)
# The task group around the lifespan, when its dependencies run concurrently.
_current_task_group: ContextVar[anyio.abc.TaskGroup | None] = ContextVar(
    "fastapi_lifespan_task_group", default=None
)


async def observed(
    set_up_one: Callable[[Dependant, dict[str, Any]], Awaitable[Any]],
    dependant: Dependant,
    values: dict[str, Any],
    teardowns: _Teardowns,
) -> Any:
    """Set one dependency up (`_Solver._enter`), logged and traced, and its exit."""
    run = _current_run.get()
    assert run is not None
    entered = len(teardowns)
    value = await run.observer.observe(
        dependant.call, _SET_UP, partial(set_up_one, dependant, values)
    )
    if len(teardowns) > entered:
        name, context_manager = teardowns[-1]
        teardowns[-1] = (
            name,
            _ObservedExit(context_manager, call=dependant.call, observer=run.observer),
        )
    return value


async def set_up_values(
    app: Any, declarations: dict[Hashable, _Declaration], teardowns: _Teardowns
) -> dict[Hashable, tuple[Any, Any]]:
    """Set the run's dependencies up: observed, and concurrently if asked for."""
    run = _Run(_Observer(tracer=_tracer(app)))
    _current_run.set(run)
    with run.observer.phase("startup"):
        task_group = _current_task_group.get()
        if task_group is None:
            return await _set_up_one_after_the_other(declarations, teardowns)
        run.graph = _Graph(task_group=task_group)
        return await run.graph.set_up(declarations)


async def tear_down(teardowns: _Teardowns) -> list[BaseException]:
    """Tear the run's dependencies down, observed, concurrently if set up so."""
    run = _current_run.get()
    if run is None:
        return await _tear_down(teardowns)
    _current_run.set(None)
    with run.observer.phase("shutdown"):
        if run.graph is None:
            errors = await _tear_down(teardowns)
        else:
            errors = await run.graph.tear_down()
        run.observer.failed(errors)
    return errors


def concurrently(app: Any, lifespan_app: ASGIApp) -> ASGIApp:
    """
    The lifespan of `app`, in a task group where its dependencies are set up and
    torn down, if it asks for it (`concurrent_lifespan_dependencies`).
    """
    if not getattr(app, "concurrent_lifespan_dependencies", False):
        return lifespan_app

    async def run(scope: Scope, receive: Receive, send: Send) -> None:
        error: BaseException | None = None
        try:
            async with anyio.create_task_group() as task_group:
                token = _current_task_group.set(task_group)
                try:
                    await lifespan_app(scope, receive, send)
                finally:
                    _current_task_group.reset(token)
        except BaseExceptionGroup as group:
            # The dependencies' tasks keep their errors: this is the lifespan's.
            error = group.exceptions[0]
        if error is not None:
            raise error

    return run


@types.coroutine
def _resume(steps: Generator[Any, Any, Any], suspended_at: Any) -> Any:
    """
    Await a coroutine (or generator-based one) that was already stepped and
    suspended (at `suspended_at`): the rest of what awaiting it would have done,
    in the task that stepped it, whatever the async backend.
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


@dataclass(eq=False, slots=True)
class _Node:
    """One dependency instance of a concurrent run."""

    # The dependency as declared, and the one that runs (its override, if any).
    declared: Dependant
    used: Dependant
    # A lifespan-scoped dependency (not an unscoped sub-dependency).
    lifespan: bool
    # A generator: its set-up and teardown run in a task of its own. The others
    # are called by a starter task (see `_Graph._start_set_ups`).
    own_task: bool
    # Its sub-dependencies, (parameter name, node), and the nodes that need it.
    # (Empty tuples until there is one: fewer objects for the garbage collector.)
    subs: list[tuple[str | None, "_Node"]] | tuple[()] = ()
    dependents: list["_Node"] | tuple[()] = ()
    # Sub-dependencies not set up yet: it starts when none is left.
    waiting: int = 0
    value: Any = None
    # Set up: to tear down (or just finish, without teardown) at shutdown.
    ok: bool = False
    exiting: bool = False
    # The context variables its set-up, and those of what it needs, set.
    context: dict[ContextVar[Any], Any] | None = None
    # Set up, with something to exit: its task waits for this event.
    may_exit: anyio.Event | None = None
    # Dependents started and not finished (set-up failed, or torn down).
    pending: int = 0

    def values(self) -> dict[str, Any]:
        if not self.subs:
            return {}
        return {name: sub.value for name, sub in self.subs if name is not None}

    def apply_context(self) -> Context:
        """Set what its sub-dependencies set; the context before its own set-up."""
        for _, sub in self.subs:
            if sub.context:
                for variable, value in sub.context.items():
                    variable.set(value)
        return copy_context()

    def keep_context(self, before: Context) -> None:
        """Keep the context variables it set, with those of its sub-dependencies."""
        after = copy_context()
        context: dict[ContextVar[Any], Any] = {}
        for _, sub in self.subs:
            if sub.context:
                context.update(sub.context)
        if after != before:
            for variable, value in after.items():
                if before.get(variable, _MISSING) is not value:
                    context[variable] = value
        if context:
            self.context = context


@dataclass(slots=True)
class _Graph:
    """The dependencies of one concurrent run: their tasks and their order."""

    task_group: anyio.abc.TaskGroup
    # Finds each node as the sequential set-up finds each value.
    solver: _Solver = field(default_factory=lambda: _Solver(teardowns=[]))
    nodes: list[_Node] = field(default_factory=list)
    # The dependencies without teardown ready to start, and the cancel scope of
    # the starter task going through them (None when no task is).
    runnable: deque[_Node] = field(default_factory=deque)
    starter: anyio.CancelScope | None = None
    # Nothing more starts (a set-up failed, or the startup ended).
    stopped: bool = False
    # The cancel scopes of the set-ups in progress.
    running: set[anyio.CancelScope] = field(default_factory=set)
    # Nodes started whose set-up hasn't ended, and nodes set up.
    setting_up: int = 0
    ready: int = 0
    settled: anyio.Event = field(default_factory=anyio.Event)
    shutting_down: bool = False
    # Nodes started and not finished, and when none is left.
    unfinished: int = 0
    finished: anyio.Event = field(default_factory=anyio.Event)
    # Entered in the lifespan's task for the whole run: cancelled when a
    # dependency's task is cancelled while it runs (its task group's child task
    # crashed), so that the lifespan ends as it would with that task group.
    host_scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    set_up_errors: list[BaseException] = field(default_factory=list)
    tear_down_errors: list[BaseException] = field(default_factory=list)

    def add(self, dependant: Dependant, overrides: dict[Any, Any]) -> _Node:
        slots, key, used = self.solver.slot(dependant, overrides)
        node: _Node | None = slots.get(key)
        if node is not None and (dependant.use_cache or dependant.scope == "lifespan"):
            return node
        call = used.call
        own_task = _is_async_gen_callable(call) or _is_gen_callable(call)
        # (Positional: a node per dependency, and keywords cost more here.)
        node = _Node(dependant, used, dependant.scope == "lifespan", own_task)
        slots.setdefault(key, node)
        if used.dependencies:
            node.subs = subs = []
            for sub_dependant in used.dependencies:
                sub = self.add(sub_dependant, overrides)
                subs.append((sub_dependant.name, sub))
                if sub.dependents:
                    sub.dependents.append(node)
                else:
                    sub.dependents = [node]
            node.waiting = len(subs)
        self.nodes.append(node)
        if not used.dependencies:
            # Needs none of the others: it starts once the graph is built (its
            # task, or the starter task, runs at the next await).
            self._start(node)
        return node

    async def set_up(
        self, declarations: dict[Hashable, _Declaration]
    ) -> dict[Hashable, tuple[Any, Any]]:
        self.host_scope.__enter__()
        roots = {}
        for key, (declared, provider) in declarations.items():
            overrides = getattr(provider, "dependency_overrides", {})
            call = overrides.get(declared.call, declared.call)
            roots[key] = (call, self.add(declared, overrides))
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
        return {key: (call, node.value) for key, (call, node) in roots.items()}

    def _start(self, node: _Node) -> None:
        self.setting_up += 1
        self.unfinished += 1
        for _, sub in node.subs:
            sub.pending += 1
        if node.own_task:
            self.task_group.start_soon(self._run, node)
            return
        self.runnable.append(node)
        if self.starter is None:
            self._new_starter()

    def _new_starter(self) -> None:
        self.starter = anyio.CancelScope()
        self.task_group.start_soon(self._start_set_ups, self.starter)

    async def _start_set_ups(self, scope: anyio.CancelScope) -> None:
        """
        Call the runnable dependencies without teardown one after the other, in
        this task, while each returns without waiting: no task each for those that
        never wait. One that waits keeps this task, and a new one goes on.
        """
        with scope:
            set_ups = self._set_ups_in_turn(scope)
            try:
                suspended_at = set_ups.send(None)
            except StopIteration:
                return
            finally:
                if self.starter is scope:
                    self.starter = None
            # One waits: this task stays with it (what it entered, a cancel scope
            # say, belongs to this task), a new one goes on.
            if self.runnable and not self.stopped:
                self._new_starter()
            self.running.add(scope)
            try:
                await _resume(set_ups, suspended_at)
            finally:
                self.running.discard(scope)

    @types.coroutine
    def _set_ups_in_turn(self, scope: anyio.CancelScope) -> Generator[Any, Any, None]:
        """
        The set-ups of the starter task with `scope`, one after the other: it
        yields only when one waits (its await's own yield), and then ends with it.
        """
        while self.runnable and not self.stopped:
            node = self.runnable.popleft()
            before = node.apply_context()
            try:
                value = yield from self.solver._enter(node.used, node.values())
            except BaseException as error:
                self._failed(node, error)
                if self.starter is scope:
                    # It failed without waiting: nothing more starts.
                    continue
                if isinstance(error, anyio.get_cancelled_exc_class()):
                    raise
                return
            node.keep_context(before)
            self._set_up(node, value)
            if self.starter is not scope:
                return

    async def _run(self, node: _Node) -> None:
        """Set a generator up; once its dependents are torn down, exit it."""
        if self.stopped:
            # The startup failed before this task ran: it never starts.
            self.setting_up -= 1
            self._finish(node)
            self._check_settled()
            return
        solver = _Solver(teardowns=[])
        # Its set-up and teardown run in it, so a generator may open a task group
        # around its yield.
        with anyio.CancelScope() as scope:
            self.running.add(scope)
            try:
                before = node.apply_context()
                value = await solver._enter(node.used, node.values())
            except BaseException as error:
                self._failed(node, error)
                if isinstance(error, anyio.get_cancelled_exc_class()):
                    raise
                return
            finally:
                self.running.discard(scope)
            node.keep_context(before)
            node.may_exit = anyio.Event()
            self._set_up(node, value)
            try:
                await node.may_exit.wait()
            except anyio.get_cancelled_exc_class():
                # Cancelled while it runs: by a hard cancellation of the lifespan,
                # or by the task group it opened, whose child task crashed (either
                # way the run ends), or by a failed startup, after its set-up had
                # outlived that. It still exits after its dependents.
                if not scope.cancel_called:
                    self.host_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await node.may_exit.wait()
            try:
                if teardown_error := await _exit(*solver.teardowns[0]):
                    self.tear_down_errors.append(teardown_error)
            finally:
                self._finish(node)

    def _set_up(self, node: _Node, value: Any) -> None:
        """`node` is ready: start what was waiting for it."""
        node.value = value
        node.ok = True
        self.setting_up -= 1
        self.ready += 1
        if self.shutting_down:
            # Its set-up outlived the end of the startup: nothing depends on it.
            self._exit(node)
        elif not self.stopped:
            for dependent in node.dependents:
                dependent.waiting -= 1
                if dependent.waiting == 0:
                    self._start(dependent)
        self._check_settled()

    def _failed(self, node: _Node, error: BaseException) -> None:
        """Its set-up failed: cancel those still running; it has nothing to exit."""
        self.setting_up -= 1
        if not (self.stopped and isinstance(error, anyio.get_cancelled_exc_class())):
            if isinstance(error, Exception):
                # Named after the lifespan-scoped dependency it is part of.
                lifespan_node = node
                while not lifespan_node.lifespan:
                    lifespan_node = cast(list[_Node], lifespan_node.dependents)[0]
                _note_set_up_failure(error, lifespan_node.declared, lifespan_node.used)
            self.set_up_errors.append(error)
            self._stop()
        self._finish(node)
        self._check_settled()

    def _stop(self) -> None:
        """Start nothing more; cancel the set-ups in progress."""
        self.stopped = True
        while self.runnable:
            self.setting_up -= 1
            self._finish(self.runnable.popleft())
        for scope in self.running:
            scope.cancel()
        self._check_settled()

    def _check_settled(self) -> None:
        if self.ready == len(self.nodes) or (self.stopped and not self.setting_up):
            self.settled.set()

    def _exit(self, node: _Node) -> None:
        """Exit `node` if it is set up and everything that needs it has finished."""
        if self.shutting_down and node.ok and not node.pending and not node.exiting:
            node.exiting = True
            if node.may_exit is not None:
                node.may_exit.set()
            else:
                self._finish(node)

    def _finish(self, node: _Node) -> None:
        """`node` is done (torn down, or never set up): release what it needs."""
        finished = [node]
        while finished:
            node = finished.pop()
            self.unfinished -= 1
            for _, sub in node.subs:
                sub.pending -= 1
                if self.shutting_down and sub.ok and not sub.pending:
                    if sub.may_exit is not None:
                        if not sub.exiting:
                            sub.exiting = True
                            sub.may_exit.set()
                    elif not sub.exiting:
                        sub.exiting = True
                        finished.append(sub)
        if not self.unfinished:
            self.finished.set()

    async def tear_down(self) -> list[BaseException]:
        """Exit every dependency set up, dependents first, concurrently."""
        try:
            self.abandon()
            if self.unfinished:
                # The teardowns run in their dependencies' tasks, which a hard
                # cancellation of the lifespan interrupts too.
                with anyio.CancelScope(shield=True):
                    await self.finished.wait()
        finally:
            self.host_scope.__exit__(None, None, None)
        return self.tear_down_errors

    def abandon(self) -> None:
        """Start tearing down, dependents first, without waiting."""
        self.shutting_down = True
        self._stop()
        for node in self.nodes:
            self._exit(node)
