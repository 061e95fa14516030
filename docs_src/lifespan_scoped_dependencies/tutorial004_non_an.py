from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

config = {}


class ConnectionPool:
    def __init__(self, url: str) -> None:
        self.url = url


@asynccontextmanager
async def lifespan(app: FastAPI):
    print("App startup: loading the configuration")
    config["database_url"] = "sqlite:///./app.db"
    yield
    print("App shutdown")
    config.clear()


async def get_pool():
    print("Pool set up")
    yield ConnectionPool(config["database_url"])
    print("Pool torn down")


app = FastAPI(lifespan=lifespan)


@app.get("/items/")
async def read_items(
    pool: ConnectionPool = Depends(get_pool, scope="lifespan"),
):
    return {"database_url": pool.url}
