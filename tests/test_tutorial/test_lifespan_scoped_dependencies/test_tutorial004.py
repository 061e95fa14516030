import importlib

import pytest
from fastapi.testclient import TestClient


@pytest.fixture(
    name="mod",
    params=[
        pytest.param("tutorial004"),
        pytest.param("tutorial004_non_an"),
    ],
)
def get_mod(request: pytest.FixtureRequest):
    return importlib.import_module(
        f"docs_src.lifespan_scoped_dependencies.{request.param}"
    )


def test_startup_and_shutdown_order(mod, capsys: pytest.CaptureFixture[str]):
    with TestClient(mod.app) as client:
        response = client.get("/items/")
        assert response.json() == {"database_url": "sqlite:///./app.db"}
    assert capsys.readouterr().out.splitlines() == [
        "App startup: loading the configuration",
        "Pool set up",
        "Pool torn down",
        "App shutdown",
    ]
