import importlib

import pytest
from fastapi.testclient import TestClient


@pytest.fixture(
    name="mod",
    params=[
        pytest.param("tutorial002"),
        pytest.param("tutorial002_non_an"),
    ],
)
def get_mod(request: pytest.FixtureRequest):
    return importlib.import_module(
        f"docs_src.lifespan_scoped_dependencies.{request.param}"
    )


def test_one_engine_for_the_run_a_session_per_request(
    mod, capsys: pytest.CaptureFixture[str]
):
    with TestClient(mod.app) as client:
        assert capsys.readouterr().out == "Engine for sqlite:///./app.db created\n"
        for _ in range(2):
            response = client.get("/items/")
            assert response.status_code == 200, response.text
            assert response.json() == {
                "database_url": "sqlite:///./app.db",
                "session_open": True,
            }
        assert capsys.readouterr().out == ""
    assert capsys.readouterr().out == "Engine disposed\n"
