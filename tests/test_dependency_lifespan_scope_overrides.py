from collections.abc import Callable
from typing import Annotated, Any

import pytest
from fastapi import BackgroundTasks, Depends, FastAPI, Request
from fastapi.exceptions import DependencyScopeError
from fastapi.testclient import TestClient

events: list[str] = []


def get_settings() -> dict[str, str]:
    events.append("settings")
    return {"dsn": "real"}


def get_pool(settings: Annotated[dict[str, str], Depends(get_settings)]):
    events.append("pool up")
    yield {"pool": settings["dsn"]}
    events.append("pool down")


def get_cache():
    events.append("cache up")
    yield "cache"
    events.append("cache down")


def get_client(
    cache: Annotated[str, Depends(get_cache, scope="lifespan")],
    pool: Annotated[dict[str, str], Depends(get_pool, scope="lifespan")],
) -> dict[str, str]:
    return {**pool, "cache": cache}


def make_app() -> FastAPI:
    events.clear()
    app = FastAPI()

    @app.get("/")
    def read(
        client: Annotated[dict[str, str], Depends(get_client, scope="lifespan")],
    ) -> dict[str, str]:
        return client

    return app


def needs_query(q: str) -> dict[str, str]:
    return {"q": q}  # pragma: no cover


def needs_optional_query(q: str | None = None) -> dict[str, str | None]:
    return {"q": q}  # pragma: no cover


def needs_request(request: Request) -> dict[str, str]:
    return {"path": request.url.path}  # pragma: no cover


def needs_background_tasks(tasks: BackgroundTasks) -> dict[str, str]:
    return {}  # pragma: no cover


def needs_query_deeper(
    inner: Annotated[dict[str, str], Depends(needs_query)],
) -> dict[str, str]:
    return inner  # pragma: no cover


@pytest.mark.parametrize(
    ("replacement", "need", "chain"),
    [
        (
            needs_query,
            'the query parameter "q"',
            "settings=needs_query (overriding get_settings)",
        ),
        (
            needs_optional_query,
            'the query parameter "q"',
            "settings=needs_optional_query (overriding get_settings)",
        ),
        (
            needs_request,
            'the parameter "request" (request)',
            "settings=needs_request (overriding get_settings)",
        ),
        (
            needs_background_tasks,
            'the parameter "tasks" (background tasks)',
            "settings=needs_background_tasks (overriding get_settings)",
        ),
        (
            needs_query_deeper,
            'the query parameter "q"',
            "settings=needs_query_deeper (overriding get_settings) -> "
            "inner=needs_query",
        ),
    ],
)
def test_override_of_a_sub_dependency_needing_request_data_fails_startup(
    replacement: Callable[..., Any], need: str, chain: str
):
    app = make_app()
    app.dependency_overrides[get_settings] = replacement
    with pytest.raises(DependencyScopeError) as exc:
        with TestClient(app):
            pass  # pragma: no cover
    message = str(exc.value)
    assert message.startswith('The dependency "get_client" has scope "lifespan"')
    assert f"needs {need}" in message
    assert f"(through get_client -> pool=get_pool -> {chain})." in message
    assert "Override it with a dependency that needs nothing" not in message
    # Checked before anything is set up.
    assert events == []


def test_override_of_a_lifespan_sub_dependency_needing_request_data_fails_startup():
    app = make_app()
    app.dependency_overrides[get_cache] = needs_request
    with pytest.raises(DependencyScopeError) as exc:
        with TestClient(app):
            pass  # pragma: no cover
    assert (
        'needs the parameter "request" (request) (through get_client -> '
        "cache=needs_request (overriding get_cache))."
    ) in str(exc.value)
    assert events == []


def test_without_overrides_the_declared_dependencies_are_set_up():
    app = make_app()
    with TestClient(app) as client:
        assert client.get("/").json() == {"pool": "real", "cache": "cache"}
        assert sorted(events) == ["cache up", "pool up", "settings"]
        assert events.index("settings") < events.index("pool up")
    assert sorted(events[3:]) == ["cache down", "pool down"]


def test_override_of_a_sub_dependency_is_set_up_in_its_place():
    app = make_app()

    def fake_settings() -> dict[str, str]:
        events.append("fake settings")
        return {"dsn": "fake"}

    app.dependency_overrides[get_settings] = fake_settings
    with TestClient(app) as client:
        assert client.get("/").json() == {"pool": "fake", "cache": "cache"}
        # The cache doesn't depend on the settings: with concurrent set-up it may
        # come before or after them.
        assert sorted(events) == ["cache up", "fake settings", "pool up"]
        assert events.index("fake settings") < events.index("pool up")


shared_events: list[str] = []


def get_test_db():
    shared_events.append("test db up")
    yield object()
    shared_events.append("test db down")


def get_real_db() -> object:
    shared_events.append("real db")  # pragma: no cover
    return object()  # pragma: no cover


def test_replacement_declared_elsewhere_as_lifespan_shares_its_instance():
    shared_events.clear()
    app = FastAPI()

    @app.get("/real")
    def read_real(db: Annotated[object, Depends(get_real_db, scope="lifespan")]) -> int:
        return id(db)

    @app.get("/test")
    def read_test(db: Annotated[object, Depends(get_test_db, scope="lifespan")]) -> int:
        return id(db)

    app.dependency_overrides[get_real_db] = get_test_db
    with TestClient(app) as client:
        assert client.get("/real").json() == client.get("/test").json()
        assert shared_events == ["test db up"]
    assert shared_events == ["test db up", "test db down"]


def test_replacement_with_use_cache_false_gets_its_own_instance():
    shared_events.clear()
    app = FastAPI()

    @app.get("/real")
    def read_real(
        db: Annotated[object, Depends(get_real_db, scope="lifespan", use_cache=False)],
    ) -> int:
        return id(db)

    @app.get("/test")
    def read_test(db: Annotated[object, Depends(get_test_db, scope="lifespan")]) -> int:
        return id(db)

    app.dependency_overrides[get_real_db] = get_test_db
    with TestClient(app) as client:
        assert client.get("/real").json() != client.get("/test").json()
        assert shared_events == ["test db up", "test db up"]
