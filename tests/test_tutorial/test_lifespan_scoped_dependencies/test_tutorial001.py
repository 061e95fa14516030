import importlib

import pytest
from fastapi.exceptions import FastAPIError
from fastapi.testclient import TestClient
from inline_snapshot import snapshot


@pytest.fixture(
    name="mod",
    params=[
        pytest.param("tutorial001"),
        pytest.param("tutorial001_non_an"),
    ],
)
def get_mod(request: pytest.FixtureRequest):
    return importlib.import_module(
        f"docs_src.lifespan_scoped_dependencies.{request.param}"
    )


def test_pool_set_up_once_and_closed_at_shutdown(
    mod, capsys: pytest.CaptureFixture[str]
):
    with TestClient(mod.app) as client:
        assert capsys.readouterr().out == "Opening a pool of 10 connections\n"
        for _ in range(3):
            response = client.get("/items/")
            assert response.status_code == 200, response.text
            assert response.json() == {"pool_size": 10}
        assert capsys.readouterr().out == ""
    assert capsys.readouterr().out == "Closing the pool\n"


def test_without_the_lifespan_the_error_says_what_to_do(mod):
    client = TestClient(mod.app)
    with pytest.raises(FastAPIError, match='"get_pool" is not available'):
        client.get("/items/")


def test_openapi_schema(mod):
    with TestClient(mod.app) as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200, response.text
    assert response.json() == snapshot(
        {
            "openapi": "3.1.0",
            "info": {"title": "FastAPI", "version": "0.1.0"},
            "paths": {
                "/items/": {
                    "get": {
                        "summary": "Read Items",
                        "operationId": "read_items_items__get",
                        "responses": {
                            "200": {
                                "description": "Successful Response",
                                "content": {"application/json": {"schema": {}}},
                            }
                        },
                    }
                }
            },
        }
    )
