"""Property-based tests of lifespan dependencies over random dependency graphs."""

import asyncio
import inspect
import json
import logging
import math
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from itertools import count
from typing import Annotated, Any

import anyio
import anyio.abc
import pytest
from fastapi import APIRouter, Depends, FastAPI
from fastapi.exceptions import DependencyScopeError
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

SCOPES = {"lifespan": "lifespan", "request": "request", "unscoped": None}
# How a lifespan dependency's teardown ends. "hang" awaits until the shutdown's
# cancel scope (a server's timeout) reaches its deadline.
TEARDOWNS = ["ok"] * 10 + ["error", "keyboard", "exit", "cancel", "hang"]
HANG_SECONDS = 30
# A bound on every wait, never reached when the fork works.
BOUND_SECONDS = 10


@dataclass(frozen=True)
class Node:
    kind: str
    use_cache: bool
    is_async: bool
    # A generator, or a function (nothing to tear down).
    is_generator: bool
    # An async set-up that awaits before it ends (one that doesn't never
    # gives the event loop a turn).
    waits: bool
    deps: tuple[int, ...]
    # Failures are injected in lifespan dependencies only.
    fail_setup: bool
    teardown: str


@dataclass(frozen=True)
class Graph:
    nodes: list[Node]
    top: list[int]
    # Where the path operation is: on the app, in an included router, or in a
    # router mounted with app.mount().
    placement: str
    # A node replaced in app.dependency_overrides, and whether its replacement
    # needs request data (an optional query parameter).
    override: tuple[int, bool] | None


@dataclass(frozen=True)
class Instance:
    serial: int
    node: int
    subs: tuple[int, ...]
    replacement: bool = False


class SetupError(Exception):
    pass


class TeardownError(Exception):
    pass


TEARDOWN_ERRORS: dict[str, type[BaseException]] = {
    "error": TeardownError,
    "keyboard": KeyboardInterrupt,
    "exit": SystemExit,
    "cancel": asyncio.CancelledError,
}


@st.composite
def graphs(draw: Any) -> Graph:
    size = draw(st.integers(1, 6))
    nodes = []
    for index in range(size):
        kind = draw(st.sampled_from(["lifespan", "lifespan", "unscoped", "request"]))
        deps = (
            draw(st.lists(st.integers(0, index - 1), unique=True, max_size=3))
            if index
            else []
        )
        is_async = draw(st.booleans())
        is_generator = draw(st.booleans())
        teardown = "ok"
        if kind == "lifespan" and is_generator:
            teardown = draw(st.sampled_from(TEARDOWNS))
            if teardown == "hang" and not is_async:
                teardown = "ok"  # A thread can't be interrupted.
        nodes.append(
            Node(
                kind=kind,
                use_cache=draw(st.booleans()),
                is_async=is_async,
                is_generator=is_generator,
                waits=is_async and draw(st.booleans()),
                deps=tuple(deps),
                fail_setup=kind == "lifespan"
                and draw(st.sampled_from([False] * 6 + [True])),
                teardown=teardown,
            )
        )
    top = draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=3))
    override = draw(
        st.none() | st.tuples(st.integers(0, size - 1), st.booleans()),
    )
    placement = draw(st.sampled_from(["app", "included", "mounted"]))
    return Graph(nodes=nodes, top=top, placement=placement, override=override)


def build(graph: Graph, log: list[tuple[str, Any]]) -> tuple[list[Any], dict[Any, Any]]:
    nodes = graph.nodes
    serials = count()
    functions: list[Any] = []

    def depends(index: int) -> Any:
        node = nodes[index]
        return Depends(
            functions[index],
            scope=SCOPES[node.kind],  # ty: ignore[invalid-argument-type]
            use_cache=node.use_cache,
        )

    def make_dependency(index: int) -> Any:
        node = nodes[index]

        def set_up(kwargs: dict[str, Instance]) -> Instance:
            if node.fail_setup:
                log.append(("fail", index))
                raise SetupError(index)
            subs = tuple(sub.serial for sub in kwargs.values())
            instance = Instance(next(serials), index, subs)
            log.append(("up", instance))
            return instance

        def tear_down(instance: Instance) -> None:
            log.append(("down", instance))
            if node.teardown in TEARDOWN_ERRORS:
                raise TEARDOWN_ERRORS[node.teardown](index)

        async def async_dependency(**kwargs: Instance) -> AsyncIterator[Instance]:
            if node.waits:
                await anyio.sleep(0)
            instance = set_up(kwargs)
            yield instance
            tear_down(instance)
            if node.teardown == "hang":
                await anyio.sleep(HANG_SECONDS)
                log.append(("hang finished", instance))  # pragma: no cover

        def sync_dependency(**kwargs: Instance) -> Iterator[Instance]:
            instance = set_up(kwargs)
            yield instance
            tear_down(instance)

        async def async_function(**kwargs: Instance) -> Instance:
            if node.waits:
                await anyio.sleep(0)
            return set_up(kwargs)

        def sync_function(**kwargs: Instance) -> Instance:
            return set_up(kwargs)

        dependency: Any = {
            (True, True): async_dependency,
            (False, True): sync_dependency,
            (True, False): async_function,
            (False, False): sync_function,
        }[node.is_async, node.is_generator]
        dependency.__name__ = f"node{index}"
        dependency.__signature__ = inspect.Signature(
            [
                inspect.Parameter(
                    f"d{dep}",
                    inspect.Parameter.KEYWORD_ONLY,
                    annotation=Annotated[Any, depends(dep)],
                )
                for dep in node.deps
            ]
        )
        return dependency

    for index in range(len(nodes)):
        functions.append(make_dependency(index))

    overrides: dict[Any, Any] = {}
    if graph.override is not None:
        index, needs_request = graph.override

        def replacement(q: str | None = None) -> Instance:
            instance = Instance(next(serials), index, (), replacement=True)
            log.append(("up", instance))
            return instance

        if not needs_request:
            replacement.__signature__ = inspect.Signature([])  # type: ignore[attr-defined]  # ty: ignore[missing-attribute]
        overrides[functions[index]] = replacement
    return [depends(index) for index in range(len(nodes))], overrides


def reachable(nodes: list[Node], top: list[int], override: int | None) -> set[int]:
    """The nodes a request or the startup may run (not below a replaced node)."""
    seen: set[int] = set()
    pending = list(top)
    while pending:
        index = pending.pop()
        if index not in seen:
            seen.add(index)
            if index != override:
                pending.extend(nodes[index].deps)
    return seen


def needs_request(nodes: list[Node], index: int) -> bool:
    return any(
        nodes[dep].kind == "request" or needs_request(nodes, dep)
        for dep in nodes[index].deps
    )


def under_lifespan(nodes: list[Node], top: list[int], target: int) -> bool:
    """Whether `target` runs at startup: a lifespan node, or below one."""

    def below(index: int, in_lifespan: bool) -> bool:
        in_lifespan = in_lifespan or nodes[index].kind == "lifespan"
        if index == target:
            return in_lifespan
        return any(below(dep, in_lifespan) for dep in nodes[index].deps)

    return any(below(index, False) for index in top)


def before_deadline(
    nodes: list[Node], startup: list[tuple[str, Any]], concurrent: bool
) -> tuple[list[Instance], list[Instance]] | None:
    """
    When an exit code set up at `startup` hangs: the exit codes that end before
    the shutdown's deadline, and the hung ones that start before it (None when
    none hangs). In order, those before the first hung one; concurrently, all but
    the hung ones and what they depend on (those wait for the hung ones to end).
    """
    started = [event[1] for event in startup if event[0] == "up"]
    generators = [
        instance
        for instance in started
        if nodes[instance.node].is_generator and not instance.replacement
    ]
    hung = [i for i in generators if nodes[i.node].teardown == "hang"]
    if not hung:
        return None
    if not concurrent:
        in_order = generators[::-1]
        first = next(i for i, instance in enumerate(in_order) if instance in hung)
        return in_order[:first], in_order[first : first + 1]
    subs = {instance.serial: instance.subs for instance in started}
    below: set[int] = set()
    pending = [sub for instance in hung for sub in instance.subs]
    while pending:
        serial = pending.pop()
        if serial not in below:
            below.add(serial)
            pending.extend(subs[serial])
    return (
        [i for i in generators if i not in hung and i.serial not in below],
        [i for i in hung if i.serial not in below],
    )


class Recorder(logging.Handler):
    """The fork's records of the exit codes that ended."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.ended: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "lifespan_phase", None) == "tear_down":
            self.ended.append(record)


async def serve(
    app: FastAPI,
    path: str,
    requests: int,
    log: list[Any],
    nodes: list[Node],
    concurrent: bool,
) -> tuple[int, list[Any], BaseException | None]:
    """
    Run the app's lifespan as a server would, send `requests` requests to `path`,
    then shut down inside a cancel scope (a server's shutdown timeout). When an
    exit code hangs, its deadline is reached once every exit code that doesn't
    wait for a hung one has ended: certain, whatever the machine's speed. Return
    how many events the startup logged, the JSON answers and the error the
    lifespan raised.
    """
    state: dict[str, Any] = {}
    answers: list[Any] = []
    error: BaseException | None = None
    to_app, from_server = anyio.create_memory_object_stream[Any](10)
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def run_lifespan() -> None:
        nonlocal error
        try:
            with anyio.CancelScope() as scope:
                scopes.append(scope)
                await app(
                    {"type": "lifespan", "state": state}, from_server.receive, send
                )
        except BaseException as exc:
            error = exc

    async def get() -> Any:
        body = bytearray()

        async def receive() -> Any:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send_response(message: Any) -> None:
            if message["type"] == "http.response.body":
                body.extend(message["body"])

        await app(
            {
                "type": "http",
                "http_version": "1.1",
                "method": "GET",
                "scheme": "http",
                "path": path,
                "raw_path": b"/",
                "root_path": "",
                "query_string": b"",
                "headers": [],
                "server": ("testserver", 80),
                "client": ("testclient", 50000),
                "state": dict(state),
            },
            receive,
            send_response,
        )
        return json.loads(body)

    scopes: list[anyio.CancelScope] = []
    startup_length = 0
    recorder = Recorder()

    async def run(tg: anyio.abc.TaskGroup) -> None:
        nonlocal startup_length
        tg.start_soon(run_lifespan)
        await to_app.send({"type": "lifespan.startup"})
        while not scopes:
            await anyio.sleep(0)
        # A server's startup timeout: when a set-up fails, what was set up is
        # torn down, and an exit code may hang there too: the timeout is reached
        # once one does.
        with anyio.fail_after(BOUND_SECONDS):
            while not sent and error is None:
                if any(
                    event[0] == "down" and nodes[event[1].node].teardown == "hang"
                    for event in log
                ):
                    scopes[0].cancel()
                await anyio.sleep(0.001)
        # A failed startup is reported, then raised once the lifespan has ended.
        while sent and sent[0]["type"] == "lifespan.startup.failed" and error is None:
            await anyio.sleep(0.001)
        startup_length = len(log)
        if not (sent and sent[0]["type"] == "lifespan.startup.complete"):
            return
        scopes[0].deadline = math.inf
        for _ in range(requests):
            answers.append(await get())
        hanging = before_deadline(nodes, log[:startup_length], concurrent)
        scopes[0].deadline = anyio.current_time() + BOUND_SECONDS
        await to_app.send({"type": "lifespan.shutdown"})
        if hanging is not None:
            ending, hung = hanging
            with anyio.fail_after(BOUND_SECONDS):
                while len(recorder.ended) < len(ending) or any(
                    ("down", instance) not in log for instance in hung
                ):
                    await anyio.sleep(0.001)
            scopes[0].deadline = anyio.current_time()

    logger = logging.getLogger("fastapi")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(recorder)
    try:
        async with to_app, from_server, anyio.create_task_group() as tg:
            await run(tg)
    finally:
        logger.removeHandler(recorder)
        logger.setLevel(level)
    return startup_length, answers, error


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(graphs())
# A hung exit code whose dependency's exit code fails after the deadline.
@example(
    Graph(
        nodes=[
            Node("lifespan", False, False, True, False, (), False, "error"),
            Node("lifespan", False, True, True, False, (0,), False, "hang"),
        ],
        top=[1],
        placement="app",
        override=None,
    )
)
@pytest.mark.parametrize("concurrent", [False, True])
def test_random_dependency_graphs(concurrent: bool, graph: Graph):
    nodes, top = graph.nodes, graph.top
    log: list[tuple[str, Any]] = []
    declarations, overrides = build(graph, log)
    app = FastAPI(concurrent_lifespan_dependencies=concurrent)
    app.dependency_overrides = overrides

    def endpoint(**kwargs: Instance) -> list[int]:
        return [kwargs[f"p{position}"].serial for position in range(len(top))]

    endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]  # ty: ignore[missing-attribute]
        [
            inspect.Parameter(
                f"p{position}",
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Annotated[Any, declarations[index]],
            )
            for position, index in enumerate(top)
        ]
    )
    router = APIRouter()
    invalid = any(
        nodes[index].kind == "lifespan" and needs_request(nodes, index)
        for index in reachable(nodes, top, None)
    )
    if invalid:
        with pytest.raises(DependencyScopeError):
            router.get("/")(endpoint)
        return
    router.get("/")(endpoint)
    if graph.placement == "app":
        app.include_router(router)
    elif graph.placement == "included":
        outer = APIRouter()
        outer.include_router(router)
        app.include_router(outer)
    else:
        app.mount("/api", router)

    # The routes of a router mounted with mount() don't follow the app's
    # overrides (they have no overrides provider), at startup as in requests.
    override = None if graph.placement == "mounted" else graph.override
    overridden = override[0] if override else None
    path = "/api/" if graph.placement == "mounted" else "/"
    startup_length, answers, error = asyncio.run(
        serve(app, path, 2, log, nodes, concurrent)
    )

    # A replacement that needs request data where a lifespan value is needed
    # fails the startup before anything is set up.
    if override is not None and override[1] and under_lifespan(nodes, top, override[0]):
        assert isinstance(error, DependencyScopeError)
        assert "(overriding node" in str(error)
        assert log == []
        return

    startup = log[:startup_length]
    started = [event[1] for event in startup if event[0] == "up"]
    serial_order = [instance.serial for instance in started]
    # Only lifespan dependencies and their unscoped sub-dependencies start up,
    # and only what is reachable once overrides are followed.
    live = reachable(nodes, top, overridden)
    for instance in started:
        assert nodes[instance.node].kind != "request" or instance.replacement
        assert instance.node in live
        assert instance.replacement or instance.node != overridden
    # Dependencies are set up before their dependants.
    for instance in started:
        for sub in instance.subs:
            assert serial_order.index(sub) < serial_order.index(instance.serial)
    # A dependency shared with use_cache=True is set up once per run.
    for index, node in enumerate(nodes):
        if node.use_cache and index != overridden:
            assert sum(instance.node == index for instance in started) <= 1
    # Every lifespan instance set up at startup is torn down exactly once, in
    # exactly the reverse order of set-up, after every request of the run, even
    # when teardowns raise BaseExceptions or hang past the deadline.
    startup_serials = set(serial_order)
    downs = [
        event[1].serial
        for event in log
        if event[0] == "down" and event[1].serial in startup_serials
    ]
    generators = [
        instance.serial
        for instance in started
        if nodes[instance.node].is_generator and not instance.replacement
    ]
    if concurrent:
        # Each exactly once, every dependent before what it depends on.
        assert sorted(downs) == sorted(generators)
        for instance in started:
            for sub in instance.subs:
                if instance.serial in downs and sub in downs:
                    assert downs.index(instance.serial) < downs.index(sub)
    else:
        assert downs == generators[::-1]
    assert not [event for event in log if event[0] == "hang finished"]
    first_down = next(
        (
            i
            for i, event in enumerate(log)
            if event[0] == "down" and event[1].serial in startup_serials
        ),
        len(log),
    )
    request_ups = [
        i
        for i, event in enumerate(log)
        if event[0] == "up" and event[1].serial not in startup_serials
    ]
    assert all(i < first_down for i in request_ups)
    # No lifespan dependency is set up during a request; requests share values.
    for i in request_ups:
        assert nodes[log[i][1].node].kind != "lifespan" or log[i][1].replacement
    if len(answers) == 2 and nodes[top[0]].kind == "lifespan":
        assert answers[0][0] == answers[1][0]
    # The error that surfaces is the right one.
    failed_setups = [event[1] for event in log if event[0] == "fail"]
    if failed_setups:
        assert isinstance(error, SetupError)
        if concurrent:
            # The first to fail in time; the others cancelled, or noted.
            assert error.args[0] in failed_setups
        else:
            assert error.args == (failed_setups[0],)
        assert not answers
        return
    assert len(answers) == 2
    # In teardown order.
    failing = [
        (event[1], nodes[event[1].node].teardown)
        for event in log
        if event[0] == "down"
        and event[1].serial in startup_serials
        and nodes[event[1].node].teardown != "ok"
    ]
    hanging = before_deadline(nodes, startup, concurrent)
    if concurrent:
        # Independent teardowns end in any order; a hung one ends at the
        # deadline, before what it depends on: the first error to end is raised.
        ended = [
            kind
            for instance, kind in failing
            if kind != "hang" and (hanging is None or instance in hanging[0])
        ]
        if ended:
            assert isinstance(error, tuple(TEARDOWN_ERRORS[kind] for kind in ended))
        else:
            assert error is None
    elif not failing or failing[0][1] == "hang":
        # The deadline's cancellation ends in its own cancel scope.
        assert error is None
    else:
        assert isinstance(error, TEARDOWN_ERRORS[failing[0][1]])
