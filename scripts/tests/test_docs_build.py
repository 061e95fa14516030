"""
Our docs pages build with upstream's docs toolchain (scripts/docs.py: zensical and the
markdown extensions of upstream's docs config, pinned in requirements-docs.txt and
installed into build/venv-docs), warnings fail the build, and the rendered page shows
what its markdown asks for: every example as a code block with its highlighted lines,
tabs, admonitions, links.
"""

import html
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import tomllib
import urllib.request
from pathlib import Path

import pytest
from fork_backend import ROOT

PAGE = "tutorial/dependencies/lifespan-scoped-dependencies"
MARKDOWN = (ROOT / "docs/en/docs" / f"{PAGE}.md").read_text()
INCLUDES = re.findall(r"^\{\* (\S+)(?: hl\[([^\]]*)\])? \*\}$", MARKDOWN, re.MULTILINE)
CODE_BLOCK = re.compile(r'<div class="highlight"><pre>(.*?)</pre></div>', re.S)
HIGHLIGHTED = re.compile(r'<span id="__span-\d+-(\d+)"><span class="hll">')


def docs_command(
    *args: object, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "scripts/docs.py", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The docs built as the README's command builds them; their output folder."""
    output = tmp_path_factory.mktemp("docs")
    result = docs_command("build", "--output", output)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No issues found" in result.stdout + result.stderr
    return output


def rendered(built: Path, page: str = PAGE) -> str:
    return (built / "site" / page / "index.html").read_text()


def expected(hl: str) -> set[int]:
    lines: set[int] = set()
    for part in filter(None, hl.split(",")):
        first, _, last = part.partition(":")
        lines.update(range(int(first), int(last or first) + 1))
    return lines


def non_annotated(path: str) -> Path | None:
    """The `_non_an` variant of an included example, where it has one."""
    example = (ROOT / "docs/en" / path).resolve()
    variant = example.with_name(f"{example.stem}_non_an.py")
    return variant if variant.is_file() else None


# Each example is shown in a tab named after the oldest Python the package
# supports (its requires-python), and its `_non_an` variant, where it has one, in a
# tab of its own under "Other versions and variants", as on FastAPI's site.
def tab_labels(built: Path) -> tuple[str, str]:
    pyproject = tomllib.loads((built / "src" / "pyproject.toml").read_text())
    python = pyproject["project"]["requires-python"].removeprefix(">=")
    return f"Python {python}+", f"Python {python}+ - non-Annotated"


def test_every_include_is_its_example_with_its_highlighted_lines(built: Path):
    # One include per example (the `_non_an` variants are its tabs).
    examples = (ROOT / "docs_src/lifespan_scoped_dependencies").glob("tutorial*.py")
    assert len(INCLUDES) == len([p for p in examples if "_non_an" not in p.stem])
    blocks = [
        (
            html.unescape(re.sub(r"<[^>]+>", "", code)).rstrip("\n") + "\n",
            set(map(int, HIGHLIGHTED.findall(code))),
        )
        for code in CODE_BLOCK.findall(rendered(built))
    ]
    variants = [non_annotated(path) for path, _ in INCLUDES]
    for (path, hl), variant in zip(INCLUDES, variants, strict=True):
        source = (ROOT / "docs/en" / path).resolve().read_text()
        assert (source.rstrip("\n") + "\n", expected(hl)) in blocks, path
        if variant is not None:
            # The variant whole, without highlights (its lines differ).
            assert (variant.read_text().rstrip("\n") + "\n", set()) in blocks, variant
    assert any(variants), "no example has a _non_an variant: nothing checks its tab"
    # The page's own fenced blocks (console output) are there too, unhighlighted.
    assert len(blocks) == (
        len(INCLUDES)
        + sum(variant is not None for variant in variants)
        + MARKDOWN.count("\n```\n") // 2
    )


def test_includes_are_tabs_and_blocks_are_admonitions(built: Path):
    page = rendered(built)
    annotated, non_annotated_label = tab_labels(built)
    assert annotated != "Python 3.8+", annotated
    labels: list[str] = []
    for path, _ in INCLUDES:
        labels.append(annotated)
        if non_annotated(path) is not None:
            labels.append(non_annotated_label)
    assert re.findall(r'<label for="__tabbed_\d+_\d+">([^<]*)</label>', page) == labels
    # Each variant's tab is under "Other versions and variants", with its tip.
    variants = labels.count(non_annotated_label)
    assert page.count("<summary>🤓 Other versions and variants</summary>") == variants
    tip = "Prefer to use the <code>Annotated</code> version if possible."
    assert page.count(tip) == variants
    # The page's own admonitions, in order (the variants' tips left out).
    blocks = re.findall(r"^/// (\w+)(?: \| (.*))?$", MARKDOWN, re.MULTILINE)
    admonitions = re.findall(
        r'<div class="admonition (\w+)">\n<p class="admonition-title">([^<]*)</p>\n'
        r"(?!<p>Prefer to use the <code>Annotated</code>)",
        page,
    )
    assert admonitions == [(kind, title or kind.capitalize()) for kind, title in blocks]
    assert blocks, "the page has no admonition: the comparison above checks nothing"
    assert not re.search(r"^\s*///", re.sub(r"<[^>]+>", "", page), re.MULTILINE)


def test_headings_have_their_anchors_and_links_resolve(built: Path):
    page = rendered(built)
    for anchor in re.findall(r"\{ #([\w-]+) \}$", MARKDOWN, re.MULTILINE):
        assert f'id="{anchor}"' in page and f'href="#{anchor}"' in page, anchor
    # The upstream page it links to is a stand-in pointing to the published one.
    assert page.count('href="../../../advanced/events/"') == 1
    stand_in = rendered(built, "advanced/events")
    assert 'href="https://fastapi.tiangolo.com/advanced/events/"' in stand_in
    home = (built / "site" / "index.html").read_text()
    assert 'href="tutorial/dependencies/lifespan-scoped-dependencies/"' in home


BROKEN = {
    "missing example": (
        "{* ../../docs_src/lifespan_scoped_dependencies/tutorial999.py *}",
        "Could not find any variants",
    ),
    "highlight past the end": (
        f"{{* {INCLUDES[0][0]} hl[1,400] *}}",
        "exactly the highlighted lines [1, 400]",
    ),
    "missing file of a plain include": (
        "{!../../docs_src/lifespan_scoped_dependencies/nothere.py!}",
        "Could not find file",
    ),
    "link to a page that is nowhere": (
        "[x](../no-such-page.md)",
        "page does not exist",
    ),
    "link to a missing anchor": ("[x](#no-such-anchor)", "anchor does not exist"),
    "unknown block type": ("/// tipp\n\ntext\n\n///", "left unrendered: '<p>///'"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_a_broken_page_fails_the_build(built: Path, tmp_path: Path, name: str):
    text, message = BROKEN[name]
    tree = tmp_path / "tree"
    for folder in ("docs", "docs_src"):
        shutil.copytree(built / "src" / folder, tree / folder)
    shutil.copyfile(built / "src" / "pyproject.toml", tree / "pyproject.toml")
    page = tree / "docs/en/docs" / f"{PAGE}.md"
    page.write_text(page.read_text() + f"\n{text}\n")
    result = docs_command("build", "--tree", tree, "--output", tmp_path / "out")
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


def test_tab_labels_need_a_lower_bound_of_python(built: Path, tmp_path: Path):
    tree = tmp_path / "tree"
    for folder in ("docs", "docs_src"):
        shutil.copytree(built / "src" / folder, tree / folder)
    pyproject = (built / "src" / "pyproject.toml").read_text()
    requires = re.search(r'^requires-python = "(.*)"$', pyproject, re.MULTILINE)
    assert requires is not None
    (tree / "pyproject.toml").write_text(
        pyproject.replace(requires.group(0), 'requires-python = "~=3.11"')
    )
    result = docs_command("build", "--tree", tree, "--output", tmp_path / "out")
    assert result.returncode != 0
    assert "requires-python is '~=3.11'" in result.stderr, result.stderr
    assert "it must read >=3.N" in result.stderr


# Started as a background job of a non-interactive shell starts it (`... &` in a
# script, as a CI job may run the test command), SIGINT is ignored from the start:
# Ctrl-C stops it all the same.
IGNORING_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_serve_prints_the_page_url_and_serves_it(tmp_path: Path, sigint: str):
    process = subprocess.Popen(
        [
            sys.executable,
            *(["-c", IGNORING_SIGINT] if sigint == "ignored" else []),
            "scripts/docs.py",
            "serve",
            "--port",
            "0",
            "--output",
            tmp_path,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    # Whatever happens, the server does not outlive 120 s.
    timer = threading.Timer(120, os.killpg, (process.pid, signal.SIGKILL))
    timer.start()
    try:
        assert process.stdout is not None
        url = None
        for line in process.stdout:
            if line.startswith("page: "):
                url = line.split()[1]
                break
        assert url is not None and url.startswith("http://127.0.0.1:"), url
        assert url.endswith(f"/{PAGE}/")
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
            assert "<h1" in (body := response.read().decode())
            assert "Lifespan-scoped Dependencies" in body
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=20) == 0
        assert "stopped" in process.stdout.read()
    finally:
        timer.cancel()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        assert process.stdout is not None
        process.stdout.close()
