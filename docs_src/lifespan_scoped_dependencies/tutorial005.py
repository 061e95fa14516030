import asyncio
from typing import Annotated

from fastapi import Depends, FastAPI


class Pool:
    async def execute(self, row: str) -> None:
        await asyncio.sleep(0)  # A query to the database
        print(f"Wrote {row}")


async def get_pool():
    print("Opening the pool")
    yield Pool()
    print("Closing the pool")


async def run_writer(pool: Annotated[Pool, Depends(get_pool, scope="lifespan")]):
    queue: asyncio.Queue[str] = asyncio.Queue()

    async def write_events():
        while True:
            event = await queue.get()
            await pool.execute(event)
            queue.task_done()

    task = asyncio.create_task(write_events())
    print("Writer started")
    yield queue
    await queue.join()
    task.cancel()
    print("Writer stopped")


app = FastAPI(dependencies=[Depends(run_writer, scope="lifespan")])


@app.post("/events/")
async def create_event(
    event: str,
    queue: Annotated[asyncio.Queue[str], Depends(run_writer, scope="lifespan")],
):
    await queue.put(event)
    return {"queued": event}
