import time
from typing import Annotated

import anyio
from fastapi import Depends, FastAPI


async def get_database():
    await anyio.sleep(0.1)  # Connecting to the database
    print("Database connected")
    yield {"name": "database"}
    print("Database disconnected")


async def get_search_client():
    await anyio.sleep(0.1)  # Opening connections to the search service
    print("Search client ready")
    yield {"name": "search"}
    print("Search client closed")


def load_model():
    time.sleep(0.1)  # Reading the model from disk, in the thread pool
    print("Model loaded")
    return {"name": "model"}


async def get_report_cache(
    database: Annotated[dict, Depends(get_database, scope="lifespan")],
):
    print("Report cache filled")
    yield {"name": "report cache", "from": database["name"]}
    print("Report cache cleared")


app = FastAPI(concurrent_lifespan_dependencies=True)


@app.get("/status/")
def read_status(
    cache: Annotated[dict, Depends(get_report_cache, scope="lifespan")],
    search: Annotated[dict, Depends(get_search_client, scope="lifespan")],
    model: Annotated[dict, Depends(load_model, scope="lifespan")],
):
    return {"ready": [cache["name"], search["name"], model["name"]]}
