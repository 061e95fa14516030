import importlib

import pytest
from fastapi.testclient import TestClient


@pytest.fixture(
    name="mod",
    params=[
        pytest.param("tutorial005"),
        pytest.param("tutorial005_non_an"),
    ],
)
def get_mod(request: pytest.FixtureRequest):
    return importlib.import_module(
        f"docs_src.lifespan_scoped_dependencies.{request.param}"
    )


def test_background_writer_runs_between_pool_setup_and_teardown(
    mod, capsys: pytest.CaptureFixture[str]
):
    with TestClient(mod.app) as client:
        assert capsys.readouterr().out.splitlines() == [
            "Opening the pool",
            "Writer started",
        ]
        for event in ("signup", "login", "logout"):
            assert client.post("/events/", params={"event": event}).json() == {
                "queued": event
            }
    # Every queued event is written before the writer stops, and the writer
    # stops before the pool it writes with is closed.
    assert capsys.readouterr().out.splitlines() == [
        "Wrote signup",
        "Wrote login",
        "Wrote logout",
        "Writer stopped",
        "Closing the pool",
    ]
