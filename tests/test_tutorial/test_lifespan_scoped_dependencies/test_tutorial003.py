import importlib

import pytest
from fastapi.testclient import TestClient


@pytest.fixture(
    name="mod",
    params=[
        pytest.param("tutorial003"),
        pytest.param("tutorial003_non_an"),
    ],
)
def get_mod(request: pytest.FixtureRequest):
    return importlib.import_module(
        f"docs_src.lifespan_scoped_dependencies.{request.param}"
    )


def test_the_override_is_set_up_instead(mod, capsys: pytest.CaptureFixture[str]):
    mod.test_read_items()
    # The production dependency never ran, and the override was removed.
    assert capsys.readouterr().out == ""
    assert mod.app.dependency_overrides == {}


def test_without_override(mod, capsys: pytest.CaptureFixture[str]):
    with TestClient(mod.app) as client:
        assert client.get("/items/").json() == {"database": "postgresql://production"}
    assert capsys.readouterr().out == (
        "Connecting to postgresql://production\n"
        "Disconnecting from postgresql://production\n"
    )
