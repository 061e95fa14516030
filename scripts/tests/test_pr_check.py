"""The helpers of `fork.py pr-check` (the command itself runs in scripts/test.sh)."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import fork
import pytest

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
    one_more = (
        moved
        + "fastapi/a.py:12:1: warning[redundant-condition] Name `x` is always truthy\n"
    )
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


def test_the_final_selection_is_the_prs_files_and_the_other_listed_tests(
    tmp_path: Path,
):
    for rel in ("tests/test_a.py", "tests/test_pr.py", "tests/test_b.py"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).touch()
    listed = [
        "tests/test_b.py::test_two[x y]",
        "tests/test_pr.py::test_one",
        "tests/test_fork_only.py::test_one",
        "tests/test_a.py::test_one",
        "tests/test_b.py::test_two[x y]",
    ]
    assert fork.final_selection(tmp_path, ["tests/test_pr.py"], listed) == (
        [
            "tests/test_pr.py",
            "tests/test_a.py::test_one",
            "tests/test_b.py::test_two[x y]",
        ],
        1,
    )


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
    diff = fork.git(
        tmp_path, "diff", "-U0", "--cached", "--src-prefix=a/", "--dst-prefix=b/"
    )
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


# The PR's size check, on a small synthetic upstream and PR.
LIMITS = {"total": 40, "fastapi/": 12, "tests/": 20, "docs/": 5, "docs_src/": 4}


def _lines(count: int, no_cover: int = 0) -> str:
    return "".join(
        f"x = {n}  # pragma: no cover\n" if n < no_cover else f"x = {n}\n"
        for n in range(count)
    )


def _commit(tree: Path, files: dict[str, str], message: str) -> None:
    for rel, text in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    fork.git(tree, "add", "-A")
    fork.git(tree, "commit", "-q", "-m", message)


def _synthetic_pr(tree: Path, pr_tests: str) -> fork.PrSize:
    """
    Upstream: 40 lines in tests/ (2 with "pragma: no cover", 5%), a module, a
    page, a README; the PR changes all of them and adds `pr_tests`.
    """
    fork.git(tree, "init", "-q", "-b", "main")
    _commit(
        tree,
        {
            "fastapi/a.py": _lines(10),
            "tests/test_a.py": _lines(20, no_cover=1),
            "tests/sub/test_b.py": _lines(20, no_cover=1),
            "tests/data.txt": "pragma: no cover\n" * 100,  # not a test module
            "docs/en/page.md": _lines(3),
            "README.md": "readme\n",
        },
        "upstream",
    )
    fork.git(tree, "tag", fork.UPSTREAM_TAG)
    module = _lines(10).replace("x = 3\n", "x = 'three'\n")  # 1 added, 1 removed
    _commit(
        tree,
        {
            "fastapi/a.py": module,
            "fastapi/new.py": _lines(10),
            "tests/test_new.py": pr_tests,
            "docs/en/page.md": _lines(5),
            "docs_src/example.py": _lines(4),
            "README.md": "readme\nmore\n",
        },
        "the PR",
    )
    return fork.measure_pr_size(tree)


def test_pr_size_is_measured_against_upstream(tmp_path: Path):
    size = _synthetic_pr(tmp_path, _lines(20, no_cover=1))
    assert size.changed == {
        "README.md": 1,
        "docs/en/page.md": 2,
        "docs_src/example.py": 4,
        "fastapi/a.py": 2,
        "fastapi/new.py": 10,
        "tests/test_new.py": 20,
    }
    assert size.total == 39
    areas = ["fastapi/", "tests/", "docs/", "docs_src/"]
    assert [size.area(area) for area in areas] == [12, 20, 2, 4]
    assert size.outside(areas) == 1
    assert (size.test_lines, size.test_no_cover) == (20, 1)
    assert (size.upstream_test_lines, size.upstream_test_no_cover) == (40, 2)


def test_added_text_reads_the_hunks_not_lines_like_headers():
    diff = (
        "diff --git a/tests/test_a.py b/tests/test_a.py\n"
        "--- a/tests/test_a.py\n"
        "+++ b/tests/test_a.py\n"
        "@@ -2 +2,2 @@\n"
        "-old\n"
        "+++ b/not-a-header\n"
        "+x = 1  # pragma: no cover\n"
        "\\ No newline at end of file\n"
        "diff --git a/tests/test_gone.py b/tests/test_gone.py\n"
        "--- a/tests/test_gone.py\n"
        "+++ /dev/null\n"
        "@@ -1 +0,0 @@\n"
        "-gone\n"
    )
    assert fork.added_text(diff) == {
        "tests/test_a.py": ["++ b/not-a-header", "x = 1  # pragma: no cover"]
    }


def test_a_pr_within_the_limits_passes(tmp_path: Path):
    # 1 "pragma: no cover" in 20 added test lines: 5%, upstream's share exactly.
    size = _synthetic_pr(tmp_path, _lines(20, no_cover=1))
    assert fork.pr_size_problems(size, LIMITS) == []
    assert fork.pr_size_table(size, LIMITS) == (
        "PR size, in changed lines (added + removed, against pristine upstream):\n"
        "  fastapi/         12 of     12\n"
        "  tests/           20 of     20\n"
        "  docs/             2 of      5\n"
        "  docs_src/         4 of      4\n"
        "  other files       1\n"
        "  total            39 of     40\n"
        '  "pragma: no cover": on 1 of 20 lines (5.000%) the PR adds to tests/*.py; '
        "at most upstream's share, 2 of 40 lines (5.000%)"
    )


def _size(changed: dict[str, int], test_no_cover: int = 0) -> fork.PrSize:
    return fork.PrSize(
        changed=changed,
        test_lines=changed.get("tests/test_new.py", 0),
        test_no_cover=test_no_cover,
        upstream_test_lines=1000,
        upstream_test_no_cover=10,
    )


WITHIN = {
    "fastapi/a.py": 12,
    "tests/test_new.py": 20,
    "docs/page.md": 5,
    "docs_src/example.py": 4,
}


@pytest.mark.parametrize(
    ("area", "limit"),
    [("fastapi/", 12), ("tests/", 20), ("docs/", 5), ("docs_src/", 4)],
)
def test_each_folder_over_its_limit_is_a_problem(area: str, limit: int):
    limits = {**LIMITS, "total": 1000}
    changed = {**WITHIN, f"{area}more.py": 3}
    assert fork.pr_size_problems(_size(changed), limits) == [
        f"the PR changes {limit + 3} lines in {area}, over its limit of {limit} (cut 3)"
    ]
    assert "  OVER by 3" in fork.pr_size_table(_size(changed), limits)


def test_the_total_over_its_limit_names_the_folders_most_over_first():
    # Every folder at its limit, the total over its own.
    assert fork.pr_size_problems(_size(WITHIN), {**LIMITS, "total": 40}) == [
        "the PR changes 41 lines, over the limit of 40 (fastapi/: 12 of 12; "
        "tests/: 20 of 20; docs/: 5 of 5; docs_src/: 4 of 4)"
    ]
    big = {"fastapi/a.py": 393, "tests/test_new.py": 855, "docs/page.md": 196}
    big |= {"docs_src/example.py": 534, "README.md": 1200}
    limits = {"total": 1500, "fastapi/": 400, "tests/": 900, "docs/": 150}
    assert fork.pr_size_problems(_size(big), limits | {"docs_src/": 200}) == [
        "the PR changes 3,178 lines, over the limit of 1,500 (docs_src/: 534 of 200; "
        "docs/: 196 of 150; fastapi/: 393 of 400; tests/: 855 of 900; "
        "other files: 1,200)",
        "the PR changes 196 lines in docs/, over its limit of 150 (cut 46)",
        "the PR changes 534 lines in docs_src/, over its limit of 200 (cut 334)",
    ]
    table = fork.pr_size_table(_size(big), limits | {"docs_src/": 200})
    assert "  total         3,178 of  1,500  OVER by 1,678\n" in table


def test_more_pragma_no_cover_than_upstream_fails(tmp_path: Path):
    # 2 in 20 added test lines (10%) against upstream's 2 in 40 (5%).
    size = _synthetic_pr(tmp_path, _lines(20, no_cover=2))
    assert fork.pr_size_problems(size, LIMITS) == [
        '"pragma: no cover" is on 2 of 20 lines (10.000%) the PR adds to '
        "tests/*.py, more than on upstream's own: 2 of 40 lines (5.000%)"
    ]
    assert "; OVER upstream's share" in fork.pr_size_table(size, LIMITS)
    # Upstream without any: a single one is too many.
    none_upstream = fork.PrSize({}, 20, 1, 40, 0)
    assert len(fork.pr_size_problems(none_upstream, LIMITS)) == 1
    assert fork.pr_size_problems(fork.PrSize({}, 0, 0, 40, 0), LIMITS) == []


def test_the_limits_are_read_from_pyproject(tmp_path: Path):
    assert fork.pr_size_limits() == {
        "total": 1500,
        "fastapi/": 400,
        "tests/": 900,
        "docs/": 150,
        "docs_src/": 200,
    }
    pyproject = tmp_path / "pyproject.toml"
    for table, error in [
        ('fork-only = []\nlimits = {"fastapi/" = 1}', "with a 'total' limit"),
        ('fork-only = []\nlimits = {total = 1, "fastapi" = 1}', "nor a folder"),
        ('fork-only = []\nlimits = {total = "many"}', "a whole number"),
    ]:
        pyproject.write_text(f"[tool.fork.pr]\n{table}\n")
        with pytest.raises(fork.ForkBuildError, match=error):
            fork.pr_size_limits(tmp_path)
