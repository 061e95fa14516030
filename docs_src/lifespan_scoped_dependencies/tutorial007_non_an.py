from fastapi import Depends, FastAPI


class ConnectionPool:
    def __init__(self, size: int) -> None:
        self.size = size


async def get_pool(size: int):
    yield ConnectionPool(size=size)


app = FastAPI()


@app.get("/items/")
async def read_items(
    pool: ConnectionPool = Depends(get_pool, scope="lifespan"),
):
    return {"pool_size": pool.size}
