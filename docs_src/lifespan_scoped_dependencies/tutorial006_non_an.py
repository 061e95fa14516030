from itertools import count

from fastapi import Depends, FastAPI

client_numbers = count(1)


class HTTPClient:
    def __init__(self) -> None:
        self.name = f"client-{next(client_numbers)}"


def get_client():
    return HTTPClient()


app = FastAPI()


@app.get("/users/")
async def read_users(client: HTTPClient = Depends(get_client, scope="lifespan")):
    return {"client": client.name}


@app.get("/items/")
async def read_items(client: HTTPClient = Depends(get_client, scope="lifespan")):
    return {"client": client.name}


@app.get("/reports/")
async def read_reports(
    client: HTTPClient = Depends(get_client, scope="lifespan", use_cache=False),
):
    return {"client": client.name}
