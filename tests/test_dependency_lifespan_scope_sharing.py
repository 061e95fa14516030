from itertools import count
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI
from fastapi.testclient import TestClient

counter = count()
created: list[int] = []


def make_instance() -> int:
    instance = next(counter)
    created.append(instance)
    return instance


Shared = Annotated[int, Depends(make_instance, scope="lifespan")]
Own = Annotated[int, Depends(make_instance, scope="lifespan", use_cache=False)]


def uses_shared(value: Shared) -> int:
    return value


def request_scoped(shared: Shared) -> int:
    return shared


def test_use_cache_true_shares_one_instance_everywhere():
    created.clear()
    app = FastAPI()

    @app.get("/a")
    def a(
        value: Shared, nested: Annotated[int, Depends(uses_shared, scope="lifespan")]
    ) -> list[int]:
        return [value, nested]

    @app.get("/b")
    def b(
        value: Shared, from_request: Annotated[int, Depends(request_scoped)]
    ) -> list[int]:
        return [value, from_request]

    with TestClient(app) as client:
        first = client.get("/a").json()
        assert client.get("/b").json() == first
        assert first[0] == first[1]
    assert created == [first[0]]


def test_use_cache_false_gives_each_parameter_its_own_instance():
    created.clear()
    app = FastAPI()

    @app.get("/a")
    def a(value: Own, shared: Shared) -> list[int]:
        return [value, shared]

    @app.get("/b")
    def b(value: Own, other: Own, shared: Shared) -> list[int]:
        return [value, other, shared]

    def same_function(value: Own) -> int:
        return value

    app.get("/c")(same_function)
    app.get("/d")(same_function)

    with TestClient(app) as client:
        a_value, a_shared = client.get("/a").json()
        b_value, b_other, b_shared = client.get("/b").json()
        c_value = client.get("/c").json()
        # The same function on two routes declares the parameter once.
        assert client.get("/d").json() == c_value
        # Each request of the run gets the same instances.
        assert client.get("/a").json() == [a_value, a_shared]
    assert a_shared == b_shared
    assert len({a_value, b_value, b_other, c_value, a_shared}) == 5
    assert sorted(created) == sorted({a_value, b_value, b_other, c_value, a_shared})


def test_use_cache_false_in_dependencies_lists_is_one_instance_per_depends_object():
    created.clear()
    reused = Depends(make_instance, scope="lifespan", use_cache=False)
    router = APIRouter(
        dependencies=[Depends(make_instance, scope="lifespan", use_cache=False)]
    )

    @router.get("/one")
    def one() -> None:
        pass

    @router.get("/two", dependencies=[reused])
    def two() -> None:
        pass

    app = FastAPI(dependencies=[reused])
    # A router included twice is one declaration; so is each include's own list.
    app.include_router(router, prefix="/first")
    app.include_router(
        router,
        prefix="/second",
        dependencies=[Depends(make_instance, scope="lifespan", use_cache=False)],
    )

    @app.get("/three", dependencies=[reused])
    def three() -> None:
        pass

    with TestClient(app) as client:
        for path in (
            "/first/one",
            "/first/two",
            "/second/one",
            "/second/two",
            "/three",
        ):
            assert client.get(path).status_code == 200
    # reused, the router's own, the second include's: three instances.
    assert len(created) == 3


def test_unscoped_sub_dependency_runs_once_for_the_whole_startup():
    calls: list[str] = []

    def settings() -> str:
        calls.append("settings")
        return "settings"

    def fresh_settings() -> str:
        calls.append("fresh")
        return "fresh"

    def first(
        s: Annotated[str, Depends(settings)],
        f: Annotated[str, Depends(fresh_settings, use_cache=False)],
    ) -> str:
        return s

    def second(
        s: Annotated[str, Depends(settings)],
        f: Annotated[str, Depends(fresh_settings, use_cache=False)],
    ) -> str:
        return s

    app = FastAPI()

    @app.get("/")
    def read(
        a: Annotated[str, Depends(first, scope="lifespan")],
        b: Annotated[str, Depends(second, scope="lifespan")],
    ) -> list[str]:
        return [a, b]

    with TestClient(app) as client:
        assert client.get("/").json() == ["settings", "settings"]
        assert client.get("/").json() == ["settings", "settings"]
    # Independent set-ups: their order is not what this checks.
    assert sorted(calls) == ["fresh", "fresh", "settings"]
