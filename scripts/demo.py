"""A minimal app served by the README's main command: it shows the installed fork.

The lifespan-scoped dependencies demo replaces it once the feature lands.
"""

from importlib.metadata import version

import fastapi
from fastapi import FastAPI

app = FastAPI(title="fastapi lifespan-scope fork", version=fastapi.__version__)


@app.get("/")
def read_version() -> dict[str, str]:
    return {"fastapi": fastapi.__version__, "distribution": version("fastapi")}
