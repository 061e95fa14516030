from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient


class ConnectionPool:
    def __init__(self, url: str) -> None:
        self.url = url
        self.open = True

    def close(self) -> None:
        self.open = False


async def get_pool():
    pool = ConnectionPool("postgresql://production")
    yield pool
    pool.close()


app = FastAPI()


@app.get("/items/")
async def read_items(
    pool: ConnectionPool = Depends(get_pool, scope="lifespan"),
):
    return {"database": pool.url}


test_pools: list[ConnectionPool] = []


async def get_test_pool():
    pool = ConnectionPool("sqlite://")
    test_pools.append(pool)
    yield pool
    pool.close()


def test_read_items():
    app.dependency_overrides[get_pool] = get_test_pool
    with TestClient(app) as client:
        response = client.get("/items/")
        assert response.status_code == 200
        assert response.json() == {"database": "sqlite://"}
        assert test_pools[-1].open
    assert not test_pools[-1].open
    app.dependency_overrides = {}
