import importlib.util
from pathlib import Path

import pytest
from fastapi.exceptions import DependencyScopeError

import docs_src.lifespan_scoped_dependencies


@pytest.mark.parametrize("name", ["tutorial007", "tutorial007_non_an"])
def test_request_data_in_a_lifespan_dependency_fails_at_import(name: str):
    folder = Path(docs_src.lifespan_scoped_dependencies.__file__).parent
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with pytest.raises(DependencyScopeError) as exc:
        spec.loader.exec_module(module)
    assert str(exc.value) == (
        'The dependency "get_pool" has scope "lifespan": it is set up once when '
        "the application starts, outside of any request, but it needs the query "
        'parameter "size" (through get_pool). Remove that need, or use scope '
        '"request".'
    )
