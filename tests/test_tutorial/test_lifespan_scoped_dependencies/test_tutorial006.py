import importlib

import pytest
from fastapi.testclient import TestClient


@pytest.fixture(
    name="mod",
    params=[
        pytest.param("tutorial006"),
        pytest.param("tutorial006_non_an"),
    ],
)
def get_mod(request: pytest.FixtureRequest):
    return importlib.import_module(
        f"docs_src.lifespan_scoped_dependencies.{request.param}"
    )


def test_shared_and_own_instances(mod):
    with TestClient(mod.app) as client:
        users = client.get("/users/").json()["client"]
        items = client.get("/items/").json()["client"]
        reports = client.get("/reports/").json()["client"]
        assert users == items
        assert reports != users
        assert client.get("/reports/").json()["client"] == reports
    with TestClient(mod.app) as client:
        # Each run of the app gets fresh instances.
        assert client.get("/users/").json()["client"] not in (users, reports)
