"""Property-based tests of lifespan dependencies over random dependency graphs."""

import inspect
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from itertools import count
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.exceptions import DependencyScopeError
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SCOPES = {"lifespan": "lifespan", "request": "request", "unscoped": None}


@dataclass(frozen=True)
class Node:
    kind: str
    use_cache: bool
    is_async: bool
    deps: tuple[int, ...]
    # Failures are injected in lifespan dependencies only.
    fail_setup: bool
    fail_teardown: bool


@dataclass(frozen=True)
class Instance:
    serial: int
    node: int
    subs: tuple[int, ...]


class SetupError(Exception):
    pass


class TeardownError(Exception):
    pass


@st.composite
def graphs(draw: Any) -> tuple[list[Node], list[int]]:
    size = draw(st.integers(1, 6))
    nodes = []
    for index in range(size):
        kind = draw(st.sampled_from(["lifespan", "lifespan", "unscoped", "request"]))
        deps = (
            draw(st.lists(st.integers(0, index - 1), unique=True, max_size=3))
            if index
            else []
        )
        rare = st.sampled_from([False] * 6 + [True])
        nodes.append(
            Node(
                kind=kind,
                use_cache=draw(st.booleans()),
                is_async=draw(st.booleans()),
                deps=tuple(deps),
                fail_setup=kind == "lifespan" and draw(rare),
                fail_teardown=kind == "lifespan" and draw(rare),
            )
        )
    top = draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=3))
    return nodes, top


def build(nodes: list[Node], log: list[tuple[str, Any]]) -> list[Any]:
    serials = count()
    functions: list[Any] = []

    def depends(index: int) -> Any:
        node = nodes[index]
        return Depends(
            functions[index], scope=SCOPES[node.kind], use_cache=node.use_cache
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
            if node.fail_teardown:
                raise TeardownError(index)

        async def async_dependency(**kwargs: Instance) -> AsyncIterator[Instance]:
            instance = set_up(kwargs)
            yield instance
            tear_down(instance)

        def sync_dependency(**kwargs: Instance) -> Iterator[Instance]:
            instance = set_up(kwargs)
            yield instance
            tear_down(instance)

        dependency: Any = async_dependency if node.is_async else sync_dependency
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
    return [depends(index) for index in range(len(nodes))]


def reachable(nodes: list[Node], top: list[int]) -> set[int]:
    seen: set[int] = set()
    pending = list(top)
    while pending:
        index = pending.pop()
        if index not in seen:
            seen.add(index)
            pending.extend(nodes[index].deps)
    return seen


def needs_request(nodes: list[Node], index: int) -> bool:
    return any(
        nodes[dep].kind == "request" or needs_request(nodes, dep)
        for dep in nodes[index].deps
    )


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(graphs())
def test_random_dependency_graphs(graph: tuple[list[Node], list[int]]):
    nodes, top = graph
    log: list[tuple[str, Any]] = []
    declarations = build(nodes, log)
    app = FastAPI()

    def endpoint(**kwargs: Instance) -> list[int]:
        return [kwargs[f"p{position}"].serial for position in range(len(top))]

    endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                f"p{position}",
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Annotated[Any, declarations[index]],
            )
            for position, index in enumerate(top)
        ]
    )
    invalid = any(
        nodes[index].kind == "lifespan" and needs_request(nodes, index)
        for index in reachable(nodes, top)
    )
    if invalid:
        with pytest.raises(DependencyScopeError):
            app.get("/")(endpoint)
        return
    app.get("/")(endpoint)

    error: BaseException | None = None
    responses: list[list[int]] = []
    startup: list[tuple[str, Any]] = []
    try:
        with TestClient(app) as client:
            startup = list(log)
            responses = [client.get("/").json(), client.get("/").json()]
    except (SetupError, TeardownError) as exc:
        error = exc
    if isinstance(error, SetupError):
        # Startup failed: it is everything up to the failing set-up.
        failed_at = log.index(("fail", error.args[0]))
        startup = log[: failed_at + 1]

    started = [event[1] for event in startup if event[0] == "up"]
    # Only lifespan dependencies and their unscoped sub-dependencies start up.
    assert all(nodes[instance.node].kind != "request" for instance in started)
    # Dependencies are set up before their dependants.
    serial_order = [instance.serial for instance in started]
    for instance in started:
        for sub in instance.subs:
            assert serial_order.index(sub) < serial_order.index(instance.serial)
    # A dependency shared with use_cache=True is set up once per run.
    for index, node in enumerate(nodes):
        if node.use_cache:
            assert sum(instance.node == index for instance in started) <= 1
    # Every instance set up at startup is torn down exactly once, in exactly the
    # reverse order of set-up, after every request of the run.
    startup_serials = set(serial_order)
    downs = [
        event[1].serial
        for event in log
        if event[0] == "down" and event[1].serial in startup_serials
    ]
    assert downs == serial_order[::-1]
    during_requests = log[len(startup) :]
    last_request_event = max(
        (
            i
            for i, e in enumerate(during_requests)
            if e[1].serial not in startup_serials
        ),
        default=-1,
    )
    first_down = next(
        (i for i, e in enumerate(during_requests) if e[1].serial in startup_serials),
        len(during_requests),
    )
    assert last_request_event < first_down
    # No lifespan dependency is set up during a request; requests share values.
    for event in during_requests:
        if event[0] == "up":
            assert nodes[event[1].node].kind != "lifespan"
    if responses:
        assert responses[0][0] == responses[1][0] or nodes[top[0]].kind != "lifespan"
    # The error that surfaces is the right one.
    failed_setups = [event[1] for event in log if event[0] == "fail"]
    if failed_setups:
        assert isinstance(error, SetupError) and error.args == (failed_setups[0],)
        assert not responses
    else:
        failing_teardowns = [
            nodes[started[position].node]
            for position in range(len(started) - 1, -1, -1)
            if nodes[started[position].node].fail_teardown
        ]
        if failing_teardowns:
            expected_node = next(
                started[position].node
                for position in range(len(started) - 1, -1, -1)
                if nodes[started[position].node].fail_teardown
            )
            assert isinstance(error, TeardownError)
            assert error.args == (expected_node,)
        else:
            assert error is None
