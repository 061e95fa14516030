"""
A pytest plugin: every FastAPI app sets up its lifespan-scoped dependencies
concurrently, unless it says otherwise.

`scripts/test.sh` runs upstream's suite and ours a second time with it
(`-p concurrent_lifespan_dependencies`, this folder on PYTHONPATH), so that every
app shape the tests build also runs with `FastAPI(concurrent_lifespan_dependencies=
True)`. The tests that pass `concurrent_lifespan_dependencies=` themselves keep
their value.
"""

import fastapi.applications


def pytest_configure() -> None:
    defaults = fastapi.applications.FastAPI.__init__.__kwdefaults__
    assert defaults is not None
    assert defaults["concurrent_lifespan_dependencies"] is False
    defaults["concurrent_lifespan_dependencies"] = True
