import importlib

import pytest
from fastapi.exceptions import DependencyScopeError


def test_request_data_in_a_lifespan_dependency_fails_at_import():
    with pytest.raises(DependencyScopeError) as exc:
        importlib.import_module("docs_src.lifespan_scoped_dependencies.tutorial004")
    assert str(exc.value) == (
        'The dependency "get_pool" has scope "lifespan": it is set up once when '
        "the application starts, outside of any request, but it needs the query "
        'parameter "size" (through get_pool). Remove that need, or declare '
        '"get_pool" with scope "request".'
    )
