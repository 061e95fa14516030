from fastapi.testclient import TestClient

from docs_src.lifespan_scoped_dependencies import tutorial005 as mod


def test_override_in_tests():
    pools_before = len(mod.test_pools)
    mod.test_read_items()
    # The override was set up at startup and closed at shutdown, once.
    assert len(mod.test_pools) == pools_before + 1
    assert not mod.test_pools[-1].open
    assert mod.app.dependency_overrides == {}
    with TestClient(mod.app) as client:
        assert client.get("/items/").json() == {"database": "postgresql://production"}
