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


def test_override_in_tests(mod):
    pools_before = len(mod.test_pools)
    mod.test_read_items()
    # The override was set up at startup and closed at shutdown, once.
    assert len(mod.test_pools) == pools_before + 1
    assert not mod.test_pools[-1].open
    assert mod.app.dependency_overrides == {}
    with TestClient(mod.app) as client:
        assert client.get("/items/").json() == {"database": "postgresql://production"}
