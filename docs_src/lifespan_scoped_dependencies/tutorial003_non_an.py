from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient


async def get_database_url():
    print("Connecting to postgresql://production")
    yield "postgresql://production"
    print("Disconnecting from postgresql://production")


app = FastAPI()


@app.get("/items/")
async def read_items(database_url: str = Depends(get_database_url, scope="lifespan")):
    return {"database": database_url}


async def get_test_database_url():
    yield "sqlite://"


def test_read_items():
    app.dependency_overrides[get_database_url] = get_test_database_url
    with TestClient(app) as client:
        response = client.get("/items/")
        assert response.json() == {"database": "sqlite://"}
    app.dependency_overrides = {}
