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


def test_every_include_is_its_example_with_its_highlighted_lines(built: Path):
    assert len(INCLUDES) == 8
    blocks = [
        (
            html.unescape(re.sub(r"<[^>]+>", "", code)),
            set(map(int, HIGHLIGHTED.findall(code))),
        )
        for code in CODE_BLOCK.findall(rendered(built))
    ]
    for path, hl in INCLUDES:
        source = (ROOT / "docs/en" / path).resolve().read_text()
        assert (source.rstrip("\n") + "\n", expected(hl)) in [
            (text.rstrip("\n") + "\n", lines) for text, lines in blocks
        ], path
    # The page's own fenced blocks (console output) are there too, unhighlighted.
    assert len(blocks) == len(INCLUDES) + MARKDOWN.count("\n```\n") // 2


def test_includes_are_tabs_and_blocks_are_admonitions(built: Path):
    page = rendered(built)
    # markdown-include-variants 0.0.8 puts each include in a tab named after the
    # oldest Python it knows; it does not know the "_non_an" variants.
    assert page.count('<div class="tabbed-set tabbed-alternate"') == len(INCLUDES)
    assert re.findall(r'<label for="__tabbed_\d+_1">([^<]*)</label>', page) == [
        "Python 3.8+"
    ] * len(INCLUDES)
    blocks = re.findall(r"^/// (\w+)(?: \| (.*))?$", MARKDOWN, re.MULTILINE)
    assert re.findall(
        r'<div class="admonition (\w+)">\n<p class="admonition-title">([^<]*)</p>', page
    ) == [(kind, title or kind.capitalize()) for kind, title in blocks]
    assert blocks, "the page has no admonition: the comparison above checks nothing"
    assert not re.search(r"^\s*///", re.sub(r"<[^>]+>", "", page), re.MULTILINE)


def test_headings_have_their_anchors_and_links_resolve(built: Path):
    page = rendered(built)
    for anchor in re.findall(r"\{ #([\w-]+) \}$", MARKDOWN, re.MULTILINE):
        assert f'id="{anchor}"' in page and f'href="#{anchor}"' in page, anchor
    # The upstream page it links to is a stand-in pointing to the published one.
    assert page.count('href="../../../advanced/events/" target="_blank"') == 2
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
        "{* ../../docs_src/lifespan_scoped_dependencies/tutorial004.py hl[11,400] *}",
        "exactly the highlighted lines [11, 400]",
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
    page = tree / "docs/en/docs" / f"{PAGE}.md"
    page.write_text(page.read_text() + f"\n{text}\n")
    result = docs_command("build", "--tree", tree, "--output", tmp_path / "out")
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


def test_serve_prints_the_page_url_and_serves_it(tmp_path: Path):
    process = subprocess.Popen(
        [
            sys.executable,
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
