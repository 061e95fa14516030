"""
What a page includes, checked without building it (test_docs_build.py builds and
renders the pages): every example a page includes exists, every highlighted line
is in it, every example of ours is included by a page and has a test.
"""

import re
from pathlib import Path

import pytest
from fork_backend import ROOT, overlay_files

INCLUDE = re.compile(r"\{\* (?P<path>\S+)(?: hl\[(?P<lines>[^\]]*)\])? \*\}")
VARIANT = re.compile(r"(?:_non_an|_an)?(?:_py\d+)?$")
DOCS = ROOT / "docs" / "en"
PAGES = sorted(f for f in overlay_files() if f.endswith(".md"))
EXAMPLES = sorted(
    f
    for f in overlay_files()
    if f.startswith("docs_src/") and f.endswith(".py") and not f.endswith("__init__.py")
)


def includes(page: str) -> list[re.Match[str]]:
    return list(INCLUDE.finditer((ROOT / page).read_text()))


@pytest.mark.parametrize("page", PAGES)
def test_includes_resolve_and_highlights_exist(page: str):
    found = includes(page)
    assert found, f"{page} includes no example"
    for include in found:
        example = (DOCS / include["path"]).resolve()
        assert example.is_file(), include["path"]
        length = len(example.read_text().splitlines())
        for part in filter(None, (include["lines"] or "").split(",")):
            first, _, last = part.partition(":")
            assert 1 <= int(first) <= int(last or first) <= length, (page, part)


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_example_is_included(example: str):
    included = {
        VARIANT.sub("", Path(i["path"]).stem)
        for page in PAGES
        for i in includes(page)
        if Path(i["path"]).parent.name == Path(example).parent.name
    }
    assert VARIANT.sub("", Path(example).stem) in included


def test_every_example_has_a_test():
    for example in EXAMPLES:
        topic, name = Path(example).parent.name, VARIANT.sub("", Path(example).stem)
        tests = ROOT / "tests" / "test_tutorial" / f"test_{topic}"
        assert any(name in t.read_text() for t in tests.glob("test_*.py")), example
