"""The helpers of `fork.py pr-check` (the command itself runs in scripts/test.sh)."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import fork

TY_OUTPUT = """\
fastapi/a.py:3:5: warning[redundant-condition] Name `x` is always truthy
fastapi/a.py:9:1: warning[redundant-condition] Name `x` is always truthy
tests/test_b.py:40:5: error[invalid-argument-type] Argument is incorrect
Found 3 diagnostics
"""


def test_ty_diagnostics_leave_out_positions_and_the_summary():
    assert fork.ty_diagnostics(TY_OUTPUT) == Counter(
        {
            "fastapi/a.py: warning[redundant-condition] Name `x` is always truthy": 2,
            "tests/test_b.py: error[invalid-argument-type] Argument is incorrect": 1,
        }
    )
    assert fork.ty_diagnostics("All checks passed!\n") == Counter()


def test_new_diagnostics_are_what_the_baseline_has_fewer_of():
    baseline = fork.ty_diagnostics(TY_OUTPUT)
    moved = TY_OUTPUT.replace(":3:5:", ":30:5:").replace(":40:5:", ":41:9:")
    assert fork.new_diagnostics(baseline, fork.ty_diagnostics(moved)) == []
    one_more = moved + "fastapi/a.py:12:1: warning[redundant-condition] Name `x` is always truthy\n"
    assert fork.new_diagnostics(baseline, fork.ty_diagnostics(one_more)) == [
        "fastapi/a.py: warning[redundant-condition] Name `x` is always truthy"
    ]
    assert fork.new_diagnostics(fork.ty_diagnostics(one_more), baseline) == []


def test_changed_test_files_and_modules():
    names = [
        "fastapi/dependencies/lifespan.py",
        "fastapi/__init__.py",
        "pyproject.toml",
        "tests/test_a.py",
        "tests/utils.py",
        "tests/test_tutorial/test_x/__init__.py",
        "tests/test_tutorial/test_x/test_tutorial001.py",
        "docs_src/x/tutorial001.py",
    ]
    assert fork.changed_test_files(names) == [
        "tests/test_a.py",
        "tests/test_tutorial/test_x/test_tutorial001.py",
    ]
    assert fork.changed_modules(names) == ["fastapi", "fastapi.dependencies.lifespan"]


def test_added_lines_are_the_new_sides_lines(tmp_path: Path):
    fork.git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("".join(f"line{n}\n" for n in range(1, 11)))
    fork.git(tmp_path, "add", "-A")
    fork.git(tmp_path, "commit", "-q", "-m", "base")
    lines = (tmp_path / "a.py").read_text().splitlines(keepends=True)
    lines[1] = "changed2\n"
    lines[5:5] = ["inserted\n", "inserted\n"]
    del lines[8]
    (tmp_path / "a.py").write_text("".join(lines))
    (tmp_path / "new.py").write_text("one\ntwo\n")
    fork.git(tmp_path, "add", "-A")
    diff = fork.git(tmp_path, "diff", "-U0", "--cached", "--src-prefix=a/", "--dst-prefix=b/")
    assert fork.added_lines(diff) == {"a.py": {2, 6, 7}, "new.py": {1, 2}}


def test_upstream_test_requirements_follow_included_groups():
    pyproject = {
        "project": {
            "dependencies": ["starlette"],
            "optional-dependencies": {
                "all": ["itsdangerous"],
                "standard": ["uvicorn[standard]"],
                "other": ["not-this"],
            },
        },
        "dependency-groups": {
            "docs-tests": ["httpx"],
            "tests": [{"include-group": "docs-tests"}, "pytest"],
            "docs": ["not-this-either"],
        },
    }
    assert fork.upstream_test_requirements(pyproject) == [
        "starlette",
        "itsdangerous",
        "uvicorn[standard]",
        "httpx",
        "pytest",
    ]


def test_unneeded_distributions_are_those_no_requirement_pulls_in():
    given = {"roots": ["pytest"], "allow": ["pip"]}
    result = subprocess.run(
        [sys.executable, "-c", fork.UNNEEDED_DISTRIBUTIONS, json.dumps(given)],
        capture_output=True,
        text=True,
        check=True,
    )
    unneeded = json.loads(result.stdout)
    # pytest and what it needs (pluggy, iniconfig, packaging) stay; mypy (in
    # requirements-tests.txt) is not needed by pytest.
    for needed in ("pytest", "pluggy", "iniconfig", "packaging", "pip"):
        assert needed not in unneeded["distributions"]
    assert "mypy" in unneeded["distributions"]
    assert "mypy" in unneeded["modules"]
    assert "pytest" not in unneeded["modules"]
    assert "xdist.plugin" not in unneeded["plugins"]


def test_blocked_modules_are_not_found(tmp_path: Path):
    (tmp_path / "sitecustomize.py").write_text(fork.BLOCKER.format(modules=["csv"]))
    probe = (
        "import importlib.util\n"
        "assert importlib.util.find_spec('csv') is None\n"
        "assert importlib.util.find_spec('json') is not None\n"
        "try:\n"
        "    import csv\n"
        "except ModuleNotFoundError:\n"
        "    print('not found')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert result.stdout == "not found\n"


def test_ty_is_pinned_for_the_check():
    assert fork._pinned("ty") == "0.0.107"


def test_mypy_sees_every_installed_package_but_fastapi():
    hidden = [
        "fastapi",
        "fastapi-0.165.0+lifespan.12.dist-info",
        "__editable___fastapi_0_165_0_finder.py",
        "_editable_impl_fastapi.pth",
        "distutils-precedence.pth",
    ]
    seen = [
        "fastapi_cli",
        "fastapi_cli-0.0.34.dist-info",
        "fastapi_cloud_cli",
        "opentelemetry_instrumentation_fastapi-0.66b2.dist-info",
        "pydantic",
    ]
    assert [name for name in hidden + seen if not fork._hidden_from_mypy(name)] == seen
