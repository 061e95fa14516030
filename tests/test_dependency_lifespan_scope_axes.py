"""
The rules of lifespan-scoped dependencies on every axis at once, over random
dependency graphs: transport (HTTP, WebSocket, both), placement (app, included
router, router mounted with mount(), mounted FastAPI app), mode (sequential,
concurrent), backend (asyncio, trio), the app's own lifespan (none, plain, one that
catches exceptions at its yield, one running a task group), overrides (and an
override changed while the app runs), a failing set-up, and a cancellation at any
point of the startup or the shutdown (a cancel scope, or asyncio's task.cancel()).
"""

import asyncio
import inspect
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass, field
from itertools import count
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, WebSocket
from fastapi.exceptions import FastAPIError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

BOUND_SECONDS = 20


@dataclass(frozen=True)
class Node:
    lifespan: bool
    is_async: bool
    is_generator: bool
    waits: bool
    deps: tuple[int, ...]


@dataclass(frozen=True)
class Case:
    nodes: tuple[Node, ...]
    top: tuple[int, ...]
    transport: str
    placement: str
    concurrent: bool
    backend: str
    app_lifespan: str
    override: int | None
    change_override: bool
    failing: int | None
    # (phase, after how many of its events, how), or None.
    cancel: tuple[str, int, str] | None


@st.composite
def cases(draw: Any) -> Case:
    size = draw(st.integers(1, 5))
    nodes = []
    for index in range(size):
        is_async = draw(st.booleans())
        deps = (
            draw(st.lists(st.integers(0, index - 1), unique=True, max_size=2))
            if index
            else []
        )
        nodes.append(
            Node(
                lifespan=draw(st.booleans()),
                is_async=is_async,
                is_generator=draw(st.booleans()),
                waits=is_async and draw(st.booleans()),
                deps=tuple(deps),
            )
        )
    lifespan_nodes = [i for i, node in enumerate(nodes) if node.lifespan]
    top = (
        tuple(draw(st.lists(st.sampled_from(lifespan_nodes), min_size=1, max_size=3)))
        if lifespan_nodes
        else ()
    )
    backend = draw(st.sampled_from(["asyncio", "trio"]))
    hows = ["scope", "task"] if backend == "asyncio" else ["scope"]
    cancel = draw(
        st.none()
        | st.tuples(
            st.sampled_from(["startup", "shutdown"]),
            st.integers(1, 6),
            st.sampled_from(hows),
        )
    )
    return Case(
        nodes=tuple(nodes),
        top=top,
        transport=draw(st.sampled_from(["http", "websocket", "both"])),
        placement=draw(
            st.sampled_from(["app", "included", "mounted_router", "mounted_app"])
        ),
        concurrent=draw(st.booleans()),
        backend=backend,
        app_lifespan=draw(st.sampled_from(["none", "plain", "catches", "task_group"])),
        override=draw(st.none() | st.sampled_from(range(size))),
        change_override=draw(st.booleans()),
        failing=draw(st.none() | st.sampled_from(lifespan_nodes or [0]))
        if lifespan_nodes
        else None,
        cancel=cancel,
    )


class SetUpError(Exception):
    pass


@dataclass
class Run:
    """What one example did: its log of events, and how to cancel it."""

    case: Case
    log: list[tuple[str, int]]
    serials: Iterator[int]
    cancel: Callable[[], None] | None = None
    cancelled: bool = False
    loop_thread: threading.Thread = field(default_factory=threading.current_thread)
    # The instances each one was given, by serial; the generators set up.
    subs: dict[int, list[int]] = field(default_factory=dict)
    generators: set[int] = field(default_factory=set)

    def event(self, kind: str, serial: int) -> None:
        self.log.append((kind, serial))
        if self.case.cancel is None or self.cancelled or self.cancel is None:
            return
        phase, after, _ = self.case.cancel
        counted = [
            e
            for e in self.log
            if e[0].startswith("up" if phase == "startup" else "down")
        ]
        if len(counted) >= after:
            self.cancelled = True
            if threading.current_thread() is self.loop_thread:
                self.cancel()
            else:  # A sync dependency, in the thread pool.
                anyio.from_thread.run_sync(self.cancel)


def make_dependencies(run: Run) -> list[Any]:
    nodes = run.case.nodes
    functions: list[Any] = []

    def declare(index: int) -> Any:
        return Depends(
            functions[index], scope="lifespan" if nodes[index].lifespan else None
        )

    for index, node in enumerate(nodes):

        def make(index: int = index, node: Node = node) -> Any:
            def set_up(kwargs: dict[str, Any]) -> dict[str, Any]:
                serial = next(run.serials)
                run.subs[serial] = sorted(value["serial"] for value in kwargs.values())
                run.event("up start", serial)
                try:
                    if index == run.case.failing:
                        raise SetUpError(index)
                    if node.is_generator:
                        run.generators.add(serial)
                    return {"serial": serial, "node": index}
                finally:
                    run.event("up end", serial)

            async def async_generator(**kwargs: Any) -> AsyncIterator[Any]:
                if node.waits:
                    await anyio.sleep(0)
                value = set_up(kwargs)
                yield value
                run.event("down start", value["serial"])
                try:
                    if node.waits:
                        await anyio.sleep(0)
                finally:
                    run.event("down end", value["serial"])

            def sync_generator(**kwargs: Any) -> Iterator[Any]:
                value = set_up(kwargs)
                yield value
                run.event("down start", value["serial"])
                run.event("down end", value["serial"])

            async def async_function(**kwargs: Any) -> Any:
                if node.waits:
                    await anyio.sleep(0)
                return set_up(kwargs)

            def sync_function(**kwargs: Any) -> Any:
                return set_up(kwargs)

            function: Any = {
                (True, True): async_generator,
                (False, True): sync_generator,
                (True, False): async_function,
                (False, False): sync_function,
            }[node.is_async, node.is_generator]
            function.__name__ = f"node{index}"
            function.__signature__ = inspect.Signature(
                [
                    inspect.Parameter(
                        f"d{dep}",
                        inspect.Parameter.KEYWORD_ONLY,
                        annotation=Annotated[Any, declare(dep)],
                    )
                    for dep in node.deps
                ]
            )
            return function

        functions.append(make())
    return functions


def replacement_for(run: Run, index: int) -> Any:
    def replacement() -> dict[str, Any]:
        serial = next(run.serials)
        run.event("up start", serial)
        run.event("up end", serial)
        return {"serial": serial, "node": index, "replacement": True}

    return replacement


def own_lifespan(
    shape: str,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]] | None:
    if shape == "none":
        return None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if shape == "task_group":
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(anyio.sleep_forever)
                yield
                task_group.cancel_scope.cancel()
        elif shape == "catches":
            with suppress(Exception):
                yield
        else:
            yield

    return lifespan


@asynccontextmanager
async def forwarded(sub_app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    """Run a mounted app's ASGI lifespan as a server would; yield its state."""
    state: dict[str, Any] = {}
    to_app, from_parent = anyio.create_memory_object_stream[Any](2)
    to_parent, from_app = anyio.create_memory_object_stream[Any](2)
    async with (
        to_app,
        from_parent,
        to_parent,
        from_app,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(
            sub_app,
            {"type": "lifespan", "state": state},
            from_parent.receive,
            to_parent.send,
        )
        await to_app.send({"type": "lifespan.startup"})
        message = await from_app.receive()
        if message["type"] != "lifespan.startup.complete":
            raise SetUpError(message["message"])
        yield state
        await to_app.send({"type": "lifespan.shutdown"})
        await from_app.receive()


def build(run: Run) -> tuple[FastAPI, FastAPI, Any]:
    """The app the server runs, the app whose routes declare, and the functions."""
    case = run.case
    functions = make_dependencies(run)
    router = APIRouter()
    parameters = [
        inspect.Parameter(
            f"p{position}",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Annotated[Any, Depends(functions[index], scope="lifespan")],
        )
        for position, index in enumerate(case.top)
    ]

    def http_endpoint(**kwargs: Any) -> list[Any]:
        return [kwargs[f"p{i}"] for i in range(len(case.top))]

    async def websocket_endpoint(websocket: WebSocket, **kwargs: Any) -> None:
        await websocket.accept()
        await websocket.send_json([kwargs[f"p{i}"] for i in range(len(case.top))])
        await websocket.close()

    http_endpoint.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]  # ty: ignore[missing-attribute]
    websocket_endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]  # ty: ignore[missing-attribute]
        [
            inspect.Parameter(
                "websocket",
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                annotation=WebSocket,
            ),
            *parameters,
        ]
    )
    if case.transport in ("http", "both"):
        router.get("/r")(http_endpoint)
    if case.transport in ("websocket", "both"):
        router.websocket("/ws")(websocket_endpoint)
    if case.placement == "mounted_app":
        owner = FastAPI(
            lifespan=own_lifespan(case.app_lifespan),
            concurrent_lifespan_dependencies=case.concurrent,
        )
        owner.include_router(router)

        @asynccontextmanager
        async def parent_lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
            async with forwarded(owner) as state:
                yield state

        app = FastAPI(
            lifespan=parent_lifespan, concurrent_lifespan_dependencies=case.concurrent
        )
        app.mount("/m", owner)
        return app, owner, functions
    app = FastAPI(
        lifespan=own_lifespan(case.app_lifespan),
        concurrent_lifespan_dependencies=case.concurrent,
    )
    if case.placement == "app":
        app.include_router(router)
    elif case.placement == "included":
        outer = APIRouter()
        outer.include_router(router)
        app.include_router(outer)
    else:
        app.mount("/m", router)
    return app, app, functions


async def request(
    app: FastAPI, case: Case, transport: str, state: dict[str, Any]
) -> Any:
    prefix = "/m" if case.placement in ("mounted_router", "mounted_app") else ""
    answer: list[Any] = []
    sent_request = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_request
        if transport == "http":
            return {"type": "http.request", "body": b"", "more_body": False}
        if not sent_request:
            sent_request = True
            return {"type": "websocket.connect"}
        await anyio.sleep_forever()  # pragma: no cover

    async def send(message: dict[str, Any]) -> None:
        if message["type"] in ("http.response.body", "websocket.send"):
            with suppress(ValueError):  # (Not the JSON of a 500 error.)
                answer.append(json.loads(message.get("body") or message.get("text")))

    scope: dict[str, Any] = {
        "type": transport,
        "path": prefix + ("/r" if transport == "http" else "/ws"),
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "server": ("testserver", 80),
        "client": ("testclient", 50000),
        "state": dict(state),
        "scheme": "http" if transport == "http" else "ws",
        "http_version": "1.1",
        "method": "GET",
        "subprotocols": [],
    }
    await app(scope, receive, send)
    return answer[0]


async def serve(run: Run) -> dict[str, Any]:
    case = run.case
    app, owner, functions = build(run)
    if case.override is not None:
        owner.dependency_overrides[functions[case.override]] = replacement_for(
            run, case.override
        )
    outcome: dict[str, Any] = {"sent": [], "answers": [], "stale": [], "error": None}
    state: dict[str, Any] = {}
    to_app, from_server = anyio.create_memory_object_stream[Any](4)

    async def send(message: dict[str, Any]) -> None:
        outcome["sent"].append(message["type"])

    async def lifespan_task(task_status: Any) -> None:
        with anyio.CancelScope() as scope:
            if case.cancel is not None and case.cancel[2] == "task":
                task = asyncio.current_task()
                assert task is not None
                run.cancel = task.cancel
            else:
                run.cancel = scope.cancel
            task_status.started()
            try:
                await app(
                    {"type": "lifespan", "state": state}, from_server.receive, send
                )
            except BaseException as error:
                outcome["error"] = error

    with anyio.fail_after(BOUND_SECONDS):
        async with to_app, from_server, anyio.create_task_group() as tg:
            await tg.start(lifespan_task)
            await to_app.send({"type": "lifespan.startup"})
            while not outcome["sent"] and outcome["error"] is None:
                await anyio.sleep(0.001)
            if (
                outcome["sent"][:1] == ["lifespan.startup.complete"]
                and outcome["error"] is None
                and not run.cancelled
            ):
                transports = (
                    ["http", "websocket"]
                    if case.transport == "both"
                    else [case.transport]
                )
                for transport in transports * 2:
                    outcome["answers"].append(
                        (transport, await request(app, case, transport, state))
                    )
                if case.change_override and case.top:
                    changed = functions[case.top[0]]
                    if changed in owner.dependency_overrides:
                        del owner.dependency_overrides[changed]
                    else:
                        owner.dependency_overrides[changed] = replacement_for(
                            run, case.top[0]
                        )
                    for transport in transports:
                        try:
                            await request(app, case, transport, state)
                        except FastAPIError as error:
                            outcome["stale"].append(str(error))
                        else:
                            outcome["stale"].append(None)
                with anyio.move_on_after(BOUND_SECONDS / 2):
                    await to_app.send({"type": "lifespan.shutdown"})
    return outcome


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_every_rule_on_every_axis(case: Case):
    run = Run(case=case, log=[], serials=count())
    outcome = anyio.run(serve, run, backend=case.backend)
    log = run.log
    up_end = {serial: i for i, (kind, serial) in enumerate(log) if kind == "up end"}
    down_start = {s: i for i, (kind, s) in enumerate(log) if kind == "down start"}
    down_end = {serial: i for i, (kind, serial) in enumerate(log) if kind == "down end"}
    # Nothing set up is left without its exit code, and every exit code that
    # started finished (interrupted, at worst).
    assert run.generators <= set(down_start), (run.generators, log)
    assert set(down_start) == set(down_end)
    # An exit code starts only once every dependent's set-up has ended and its
    # exit code has finished.
    for serial, start in down_start.items():
        for dependent, subs in run.subs.items():
            if serial in subs:
                assert up_end[dependent] < start, log
                assert dependent not in down_end or down_end[dependent] < start, log
    if case.failing is not None and case.cancel is None and reaches(case, case.failing):
        # A failed set-up always fails the startup at the server.
        assert "lifespan.startup.failed" in outcome["sent"], outcome
        assert not outcome["answers"]
    if outcome["answers"]:
        check_answers(case, outcome)


def reaches(case: Case, target: int) -> bool:
    if case.override is not None and case.placement != "mounted_router":
        skipped = case.override
    else:
        skipped = None
    pending, seen = list(case.top), set()
    while pending:
        index = pending.pop()
        if index in seen:
            continue
        seen.add(index)
        if index == target and index != skipped:
            return True
        if index != skipped:
            pending.extend(case.nodes[index].deps)
    return False


def check_answers(case: Case, outcome: dict[str, Any]) -> None:
    follows = case.placement != "mounted_router"
    by_position: dict[int, set[int]] = {}
    for _, answer in outcome["answers"]:
        for position, index in enumerate(case.top):
            value = answer[position]
            overridden = follows and case.override == index
            # Each route receives the instance of the callable its requests resolve to.
            assert value.get("replacement", False) is overridden
            assert value["node"] == index
            by_position.setdefault(index, set()).add(value["serial"])
    # The same instance everywhere, for the whole run, on every transport.
    assert all(len(serials) == 1 for serials in by_position.values())
    if case.change_override and case.top:
        # Never a stale value: a request whose dependency is now overridden
        # otherwise than at startup fails, naming it.
        for message in outcome["stale"]:
            if follows:
                assert message is not None and f'"node{case.top[0]}"' in message
            else:
                assert message is None
