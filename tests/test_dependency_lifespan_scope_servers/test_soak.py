import asyncio
import gc
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import fastapi
import httpx
import psutil
import pytest
import starlette
import uvicorn
from fastapi.testclient import TestClient

from . import app as app_module
from .conftest import FULL_RUN, free_port, join_new_threads

# A bound for a hang only: the runs take about 30 s on an idle 2-core machine,
# more than twice as long on a busy one.
pytestmark = [pytest.mark.servers, pytest.mark.timeout(600)]

WARM_UP = 10
CYCLES = 100
# FastAPI, Starlette and the app served.
UNDER_TEST = [
    Path(fastapi.__file__).parent,
    Path(starlette.__file__).parent,
    Path(app_module.__file__),
]
# What the 100 runs may leave allocated by the code under test (measured: 117
# bytes with TestClient, 172 with uvicorn, the same every run); keeping one small
# dict per run shows as 7.5 kB and 18 kB.
MEMORY_BOUND = 2 * 1024


def run_with_test_client() -> None:
    with TestClient(app_module.app) as client:
        answer = client.get("/async").json()
        assert client.get("/sync").json() == answer
        with client.websocket_connect("/ws") as websocket:
            websocket.send_text("hello")
            assert websocket.receive_json()["pool"] == answer["pool"]


async def serve_once(port: int) -> None:
    config = uvicorn.Config(
        app_module.app, host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        assert not task.done() and time.monotonic() < deadline
        await asyncio.sleep(0.002)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        answer = (await client.get("/async")).json()
        assert (await client.get("/sync")).json() == answer
    server.should_exit = True
    await asyncio.wait_for(task, 10)


def runner(name: str) -> Callable[[], None]:
    if name == "TestClient":
        return run_with_test_client
    # The same port every time, as a restarted server would use.
    port = free_port()
    return lambda: asyncio.run(serve_once(port))


@pytest.mark.parametrize("runner_name", ["TestClient", "uvicorn"])
def test_start_stop_cycles_leak_nothing(
    runner_name: str, monkeypatch: pytest.MonkeyPatch
):
    run = runner(runner_name)
    # Count the app's events in memory: writing them to a file from new threads
    # leaves CPython's own small allocations behind, which are not ours to bound.
    events: Counter[str] = Counter()
    monkeypatch.setattr(app_module, "record", lambda event: events.update([event]))
    process = psutil.Process()
    for _ in range(WARM_UP):
        run()
    gc.collect()
    fds, threads = process.num_fds(), set(threading.enumerate())
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(CYCLES):
            run()
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()

    runs = WARM_UP + CYCLES
    for event in FULL_RUN:
        assert events[event] == runs, event
    assert not [event for event in events if "after teardown" in event]
    # The last run's threads may still be ending; a thread kept per run never ends.
    assert join_new_threads(threads) == []
    assert process.num_fds() <= fds
    assert not [obj for obj in gc.get_objects() if isinstance(obj, app_module.Resource)]
    # Memory still held that was allocated by the code under test. (Not the
    # process total: the interpreter's and libraries' bounded caches still fill
    # up over 100 runs, and under `pytest --cov` coverage keeps every finished
    # thread's data, TestClient starting one thread per run.)
    held = sum(
        stat.size_diff
        for stat in after.compare_to(before, "filename")
        if any(Path(stat.traceback[0].filename).is_relative_to(p) for p in UNDER_TEST)
    )
    assert held < MEMORY_BOUND, f"{held} bytes more held after {CYCLES} runs"
