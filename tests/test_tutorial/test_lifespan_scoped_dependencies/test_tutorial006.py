import pytest
from fastapi.testclient import TestClient

from docs_src.lifespan_scoped_dependencies.tutorial006 import app


def test_startup_and_shutdown_order(capsys: pytest.CaptureFixture[str]):
    with TestClient(app) as client:
        response = client.get("/items/")
        assert response.json() == {"database_url": "sqlite:///./app.db"}
    assert capsys.readouterr().out.splitlines() == [
        "App startup: loading the configuration",
        "Pool set up",
        "Pool torn down",
        "App shutdown",
    ]
