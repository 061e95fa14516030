import importlib

import pytest
from fastapi.testclient import TestClient


@pytest.fixture(
    name="mod",
    params=[
        pytest.param("tutorial009"),
        pytest.param("tutorial009_non_an"),
    ],
)
def get_mod(request: pytest.FixtureRequest):
    return importlib.import_module(
        f"docs_src.lifespan_scoped_dependencies.{request.param}"
    )


def test_dependencies_start_together_and_stop_dependents_first(
    mod, capsys: pytest.CaptureFixture[str]
):
    with TestClient(mod.app) as client:
        started = capsys.readouterr().out.splitlines()
        assert client.get("/status/").json() == {
            "ready": ["report cache", "search", "model"]
        }
    stopped = capsys.readouterr().out.splitlines()
    # The three independent ones start in any order; the report cache starts
    # after the database it needs, and is cleared before it disconnects.
    assert sorted(started) == [
        "Database connected",
        "Model loaded",
        "Report cache filled",
        "Search client ready",
    ]
    assert started.index("Database connected") < started.index("Report cache filled")
    assert sorted(stopped) == [
        "Database disconnected",
        "Report cache cleared",
        "Search client closed",
    ]
    assert stopped.index("Report cache cleared") < stopped.index(
        "Database disconnected"
    )
