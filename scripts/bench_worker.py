"""
One benchmark measurement, run by scripts/benchmark.py with the Python of the
environment under test (pristine upstream or the fork); prints one JSON object.

    python bench_worker.py requests KIND N SIZE [concurrent]
        -> {"per_request_us": ...}
    python bench_worker.py startup KIND SIZE
        -> {"startup_ms": ..., "first_request_ms": ...}
    python bench_worker.py lifespan MODE SHAPE:SIZE:SLEEP_MS:CYCLES...
        -> {"SHAPE:SIZE": {"startup_ms": [...], "shutdown_ms": [...], "order": ...}}

Requests go straight through the ASGI interface (no server, no network), after
the app's lifespan has started, each with its own copy of the lifespan state as a
server would give it. `concurrent` builds the app with
`FastAPI(concurrent_lifespan_dependencies=True)` (the fork only).

`lifespan` times the ASGI lifespan of an app whose lifespan dependencies have a
given shape, with the switch off (MODE `sequential`) or on (`concurrent`): the
startup from sending `lifespan.startup` to receiving `lifespan.startup.complete`,
the teardown from `lifespan.shutdown` to `lifespan.shutdown.complete`. Each of
the CYCLES runs of a shape uses a new app (the first is the cold one a server
sees); the shapes are measured one after the other, in the same process:

- `independent:N`: N async generators, each sleeping SLEEP_MS before its yield
  and SLEEP_MS after it (`await anyio.sleep`);
- `mixed:N`: N such async generators and N // 2 sync generators sleeping as long
  with `time.sleep` (run in the thread pool);
- `chain:N`: N async generators sleeping like `independent`, each needing the
  previous one; `order` says whether they were set up in the chain's order and
  torn down in the reverse one ("ok"), or what the orders were;
- `trivial:N`: N independent async functions returning a value.
"""

import asyncio
import inspect
import json
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio
from pydantic import BaseModel

from fastapi import APIRouter, Depends, FastAPI, Request


class Resource:
    def __init__(self) -> None:
        self.value = 42


class ItemOut(BaseModel):
    name: str
    value: int


def dep_a() -> int:
    return 40


def dep_b(a: Annotated[int, Depends(dep_a)]) -> int:
    return a + 2


def plain_app(size: int) -> FastAPI:
    """The shape of upstream's tests/benchmarks: sub-dependencies, a model."""
    app = FastAPI()
    router = APIRouter()
    for index in range(max(size - 1, 0)):

        @router.get(f"/route-{index}/{{item_id}}")
        def route(item_id: int, dep: Annotated[int, Depends(dep_b)]) -> ItemOut:
            return ItemOut(name="x", value=dep)  # pragma: no cover

    app.include_router(router)

    @app.get("/")
    def endpoint(dep: Annotated[int, Depends(dep_b)]) -> ItemOut:
        return ItemOut(name="item", value=dep)

    return app


GLOBAL_RESOURCE = Resource()


def global_app() -> FastAPI:
    app = FastAPI()

    @app.get("/")
    async def endpoint() -> int:
        return GLOBAL_RESOURCE.value

    return app


def global_dependency_app() -> FastAPI:
    async def get_resource() -> Resource:
        return GLOBAL_RESOURCE

    app = FastAPI()

    @app.get("/")
    async def endpoint(resource: Annotated[Resource, Depends(get_resource)]) -> int:
        return resource.value

    return app


def lifespan_app() -> FastAPI:
    async def get_resource() -> AsyncIterator[Resource]:
        yield Resource()

    app = FastAPI()

    @app.get("/")
    async def endpoint(
        resource: Annotated[Resource, Depends(get_resource, scope="lifespan")],
    ) -> int:
        return resource.value

    return app


def state_app() -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Resource]]:
        yield {"resource": Resource()}

    app = FastAPI(lifespan=lifespan)

    @app.get("/")
    async def endpoint(request: Request) -> int:
        return int(request.state.resource.value)

    return app


def per_request_app() -> FastAPI:
    def get_connection() -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(":memory:", check_same_thread=False)
        yield connection
        connection.close()

    app = FastAPI()

    @app.get("/")
    async def endpoint(
        connection: Annotated[sqlite3.Connection, Depends(get_connection)],
    ) -> int:
        return int(connection.execute("select 42").fetchone()[0])

    return app


def dishka_app() -> FastAPI:
    from dishka import Provider, Scope, make_async_container, provide
    from dishka.integrations.fastapi import FromDishka, inject, setup_dishka

    class ResourceProvider(Provider):
        @provide(scope=Scope.APP)
        def resource(self) -> Resource:
            return Resource()

    app = FastAPI()

    @app.get("/")
    @inject
    async def endpoint(resource: FromDishka[Resource]) -> int:
        return resource.value

    setup_dishka(make_async_container(ResourceProvider()), app)
    return app


def new_app(concurrent: bool = False) -> FastAPI:
    """A FastAPI app; with the concurrent set-up switch on if asked (fork only)."""
    if concurrent:
        return FastAPI(concurrent_lifespan_dependencies=True)
    return FastAPI()


def width_app(size: int, concurrent: bool = False) -> FastAPI:
    """One endpoint that needs `size` distinct lifespan dependencies."""

    def make(index: int) -> Any:
        def dependency() -> int:
            return index

        dependency.__name__ = f"resource_{index}"
        return dependency

    dependencies = [Depends(make(i), scope="lifespan") for i in range(size)]
    app = new_app(concurrent)

    @app.get("/", dependencies=dependencies)
    async def endpoint() -> int:
        return size

    return app


def depth_app(size: int) -> FastAPI:
    """A chain of `size` lifespan dependencies, each needing the one below."""
    previous: Any = None
    for index in range(size):

        def dependency(**below: int) -> int:
            return sum(below.values()) + 1

        dependency.__name__ = f"level_{index}"
        parameters = []
        if previous is not None:
            parameters.append(
                inspect.Parameter(
                    "below",
                    inspect.Parameter.KEYWORD_ONLY,
                    annotation=Annotated[int, Depends(previous, scope="lifespan")],
                )
            )
        dependency.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        previous = dependency
    app = FastAPI()

    @app.get("/")
    async def endpoint(
        top: Annotated[int, Depends(previous, scope="lifespan")],
    ) -> int:
        return top

    return app


def build(kind: str, size: int, concurrent: bool = False) -> FastAPI:
    builders: dict[str, Any] = {
        "plain": lambda: plain_app(size),
        "global": global_app,
        "global_dependency": global_dependency_app,
        "lifespan": lifespan_app,
        "state": state_app,
        "per_request": per_request_app,
        "dishka": dishka_app,
        "width": lambda: width_app(size, concurrent),
        "depth": lambda: depth_app(size),
    }
    return builders[kind]()  # type: ignore[no-any-return]


def sleeping(name: str, sleep: float, log: list[tuple[str, str]]) -> Any:
    """An async generator dependency sleeping `sleep` s before and after its yield."""

    async def dependency(**below: int) -> AsyncIterator[int]:
        log.append(("set_up", name))
        await anyio.sleep(sleep)
        yield sum(below.values()) + 1
        log.append(("tear_down", name))
        await anyio.sleep(sleep)

    # No parameters (`below` is for a chain, which sets its own signature).
    dependency.__signature__ = inspect.Signature([])  # type: ignore[attr-defined]
    return named(dependency, name)


def blocking(name: str, sleep: float) -> Any:
    """A sync generator dependency blocking its thread `sleep` s before and after."""

    def dependency() -> Iterator[int]:
        time.sleep(sleep)
        yield 1
        time.sleep(sleep)

    return named(dependency, name)


def trivial(index: int) -> Any:
    async def dependency() -> int:
        return index

    return named(dependency, f"trivial_{index}")


def named(function: Any, name: str) -> Any:
    function.__name__ = function.__qualname__ = name
    return function


def shape_app(
    shape: str, size: int, sleep: float, log: list[tuple[str, str]], concurrent: bool
) -> FastAPI:
    """One endpoint that needs the lifespan dependencies of `shape`."""
    dependencies: list[Any] = []
    if shape in ("independent", "mixed"):
        for index in range(size):
            call = sleeping(f"resource_{index}", sleep, log)
            dependencies.append(Depends(call, scope="lifespan"))
    if shape == "mixed":
        for index in range(size // 2):
            call = blocking(f"blocking_{index}", sleep)
            dependencies.append(Depends(call, scope="lifespan"))
    if shape == "trivial":
        for index in range(size):
            dependencies.append(Depends(trivial(index), scope="lifespan"))
    if shape == "chain":
        previous: Any = None
        for index in range(size):
            call = sleeping(f"level_{index}", sleep, log)
            parameters = []
            if previous is not None:
                parameters.append(
                    inspect.Parameter(
                        "below",
                        inspect.Parameter.KEYWORD_ONLY,
                        annotation=Annotated[int, Depends(previous, scope="lifespan")],
                    )
                )
            call.__signature__ = inspect.Signature(parameters)
            previous = call
        dependencies.append(Depends(previous, scope="lifespan"))
    app = new_app(concurrent)

    @app.get("/", dependencies=dependencies)
    async def endpoint() -> int:
        return size

    return app


async def time_lifespan(app: Any) -> tuple[float, float]:
    """Seconds from lifespan.startup to .complete, and from .shutdown to .complete."""
    state: dict[str, Any] = {}
    to_app: asyncio.Queue[Any] = asyncio.Queue()
    from_app: asyncio.Queue[Any] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": state}
    task = asyncio.create_task(app(scope, to_app.get, from_app.put))
    # Let the app build its middleware stack and wait for the first message.
    for _ in range(3):
        await asyncio.sleep(0)
    began = time.perf_counter()
    await to_app.put({"type": "lifespan.startup"})
    message = await from_app.get()
    startup = time.perf_counter() - began
    assert message["type"] == "lifespan.startup.complete", message
    await request(app, state)
    began = time.perf_counter()
    await to_app.put({"type": "lifespan.shutdown"})
    message = await from_app.get()
    shutdown = time.perf_counter() - began
    assert message["type"] == "lifespan.shutdown.complete", message
    await task
    return startup, shutdown


def chain_order(log: list[tuple[str, str]], size: int) -> str:
    """ "ok" if the chain was set up from the bottom and torn down from the top."""
    chain = [f"level_{index}" for index in range(size)]
    set_up = [name for phase, name in log if phase == "set_up"]
    tear_down = [name for phase, name in log if phase == "tear_down"]
    if set_up == chain and tear_down == chain[::-1]:
        return "ok"
    return f"set up {set_up}, torn down {tear_down}"


async def measure_lifespan(
    concurrent: bool, shapes: list[str]
) -> dict[str, dict[str, Any]]:
    # anyio imports its asyncio backend on first use (10 to 20 ms): load it before
    # any timing. Otherwise the concurrent mode would load it before the timed
    # window (its task group is entered as the lifespan starts), the sequential
    # one inside it (at its first anyio call).
    await anyio.sleep(0)
    results: dict[str, dict[str, Any]] = {}
    for spec in shapes:
        shape, size_text, sleep_ms, cycles_text = spec.split(":")
        size, sleep, cycles = int(size_text), float(sleep_ms) / 1e3, int(cycles_text)
        result: dict[str, Any] = {"startup_ms": [], "shutdown_ms": [], "order": "ok"}
        for _ in range(cycles):
            log: list[tuple[str, str]] = []
            app = shape_app(shape, size, sleep, log, concurrent)
            startup, shutdown = await time_lifespan(app)
            result["startup_ms"].append(startup * 1e3)
            result["shutdown_ms"].append(shutdown * 1e3)
            if shape == "chain" and result["order"] == "ok":
                result["order"] = chain_order(log, size)
        results[f"{shape}:{size}"] = result
    return results


async def start(app: Any) -> tuple[dict[str, Any], Any]:
    state: dict[str, Any] = {}
    to_app: asyncio.Queue[Any] = asyncio.Queue()
    from_app: asyncio.Queue[Any] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": state}
    task = asyncio.create_task(app(scope, to_app.get, from_app.put))
    await to_app.put({"type": "lifespan.startup"})
    message = await from_app.get()
    assert message["type"] == "lifespan.startup.complete", message

    async def stop() -> None:
        await to_app.put({"type": "lifespan.shutdown"})
        message = await from_app.get()
        assert message["type"] == "lifespan.shutdown.complete", message
        await task

    return state, stop


async def request(app: Any, state: dict[str, Any]) -> None:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": dict(state),
    }
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    assert status == [200], status


async def measure_requests(
    kind: str, count: int, size: int, concurrent: bool = False
) -> dict[str, float]:
    app = build(kind, size, concurrent)
    state, stop = await start(app)
    for _ in range(min(count, 50)):  # warm-up
        await request(app, state)
    began = time.perf_counter()
    for _ in range(count):
        await request(app, state)
    elapsed = time.perf_counter() - began
    await stop()
    return {"per_request_us": elapsed / count * 1e6}


async def measure_startup(kind: str, size: int) -> dict[str, float]:
    began = time.perf_counter()
    app = build(kind, size)
    state, stop = await start(app)
    elapsed = time.perf_counter() - began
    # Some work moves between the startup and the first request: count both too.
    await request(app, state)
    first_request = time.perf_counter() - began
    await stop()
    return {"startup_ms": elapsed * 1e3, "first_request_ms": first_request * 1e3}


def main() -> None:
    sys.setrecursionlimit(10_000)
    command, kind, *numbers = sys.argv[1:]
    result: dict[str, Any]
    if command == "requests":
        concurrent = numbers[2:] == ["concurrent"]
        result = asyncio.run(
            measure_requests(kind, int(numbers[0]), int(numbers[1]), concurrent)
        )
    elif command == "lifespan":
        result = asyncio.run(measure_lifespan(kind == "concurrent", numbers))
    else:
        result = asyncio.run(measure_startup(kind, int(numbers[0])))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
