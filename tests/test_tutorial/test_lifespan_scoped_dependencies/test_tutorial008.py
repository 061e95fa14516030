import importlib

import pytest
from fastapi.testclient import TestClient

from ...conftest import PostgreSQL

# The example's pool: min_size=2.
MIN_SIZE = 2


@pytest.fixture(
    name="mod",
    params=[
        pytest.param("tutorial008"),
        pytest.param("tutorial008_non_an"),
    ],
)
def get_mod(
    request: pytest.FixtureRequest,
    postgresql: PostgreSQL,
    database: str,
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("DATABASE_URL", postgresql.url(database))
    return importlib.import_module(
        f"docs_src.lifespan_scoped_dependencies.{request.param}"
    )


def test_one_pool_a_borrowed_connection_per_request(
    mod, postgresql: PostgreSQL, database: str
):
    assert postgresql.connections(database) == 0
    with TestClient(mod.app) as client:
        # The pool's connections, opened once when the app started.
        assert postgresql.connections(database) == MIN_SIZE
        response = client.post("/items/", json={"name": "Portal Gun"})
        assert response.status_code == 201, response.text
        item = response.json()
        assert item == {"id": 1, "name": "Portal Gun"}
        for _ in range(5):
            response = client.get(f"/items/{item['id']}")
            assert response.status_code == 200, response.text
            assert response.json() == item
        response = client.get("/items/42")
        assert response.status_code == 404, response.text
        assert response.json() == {"detail": "Item not found"}
        # Each request borrowed a connection from the pool: none was opened.
        assert postgresql.connections(database) == MIN_SIZE
    # The pool was closed at shutdown.
    postgresql.wait_for_connections(database, 0)
    # The server accepted no other connection during the whole run.
    postgresql.wait_for_sessions(database, MIN_SIZE)
