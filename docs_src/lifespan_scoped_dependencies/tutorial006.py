from itertools import count
from typing import Annotated

from fastapi import Depends, FastAPI

client_numbers = count(1)


class HTTPClient:
    def __init__(self) -> None:
        self.name = f"client-{next(client_numbers)}"


def get_client():
    return HTTPClient()


SharedClient = Annotated[HTTPClient, Depends(get_client, scope="lifespan")]
OwnClient = Annotated[
    HTTPClient, Depends(get_client, scope="lifespan", use_cache=False)
]

app = FastAPI()


@app.get("/users/")
async def read_users(client: SharedClient):
    return {"client": client.name}


@app.get("/items/")
async def read_items(client: SharedClient):
    return {"client": client.name}


@app.get("/reports/")
async def read_reports(client: OwnClient):
    return {"client": client.name}
