from typing import Annotated

from fastapi import Depends, FastAPI


class ConnectionPool:
    def __init__(self, size: int) -> None:
        self.size = size
        print(f"Opening a pool of {size} connections")

    def close(self) -> None:
        print("Closing the pool")


async def get_pool():
    pool = ConnectionPool(size=10)
    yield pool
    pool.close()


app = FastAPI()


@app.get("/items/")
async def read_items(
    pool: Annotated[ConnectionPool, Depends(get_pool, scope="lifespan")],
):
    return {"pool_size": pool.size}
