"""Build and serve our docs pages with upstream's docs toolchain.

python3 scripts/docs.py build [--output build/docs] [--tree TREE]
    Install requirements-docs.txt into build/venv-docs (only when it changed), assemble
    the fork (pinned sdist + patches + our files) into OUTPUT/src, and render its docs
    with zensical and scripts/mkdocs.yml into OUTPUT/site. The build fails on any
    warning: zensical's own (strict mode: links to missing pages or anchors), any
    warning or error logged by a markdown extension (an mdx_include file not found),
    any Python warning, and what the checks below find in the rendered pages. With
    --tree, the docs/, docs_src/ and pyproject.toml of TREE (an assembled fork) are
    built instead.
python3 scripts/docs.py serve [--output build/docs] [--port 8008]
    Build, then serve OUTPUT/site on http://127.0.0.1:PORT/ until Ctrl-C, printing the
    URL of each of our pages (--port 0 picks a free port).

The examples' tabs are labelled with the oldest Python the package supports (its
requires-python) and each tutorialNNN_non_an.py is a tab of its own, as on FastAPI's
site (scripts/docs_include_variants.py).

The checks of the rendered pages (ours: the .md files under docs/en/docs/ of this
repository): no include directive, "{!...!}" or "///" block marker left as text; every
"{* path hl[...] *}" rendered as a code block that holds the example's source with
exactly the lines of hl[...] highlighted.

Our pages link to upstream pages (UPSTREAM_PAGES) that the sdist does not carry: each
gets a one-line stand-in page that points to the published one, so that link
validation stays on for everything else. A link to any other missing page fails.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import html
import importlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
import warnings
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import fork_backend
from fork_backend import ROOT

VENV = ROOT / "build" / "venv-docs"
REQUIREMENTS = ROOT / "requirements-docs.txt"
CONFIG = ROOT / "scripts" / "mkdocs.yml"
DOCS = "docs/en/docs"
# Upstream pages our pages link to (paths under docs/en/docs/), with their titles.
UPSTREAM_PAGES = {"advanced/events.md": "Lifespan Events"}
UPSTREAM_SITE = "https://fastapi.tiangolo.com/"

INCLUDE = re.compile(r"^\{\*\s*(?P<path>\S+)\s*(?P<options>.*?)\s*\*\}$", re.MULTILINE)
HIGHLIGHT = re.compile(r"\bhl\[(?P<lines>[^\]]*)\]")
LEFTOVER = re.compile(r"\{\*\s|\{!.*?!\}|<p>/{3,}")
CODE_BLOCK = re.compile(r'<div class="highlight"><pre>(?P<code>.*?)</pre></div>', re.S)
HIGHLIGHTED_LINE = re.compile(r'<span id="__span-\d+-(\d+)"><span class="hll">')


class DocsBuildError(Exception):
    """The docs did not build cleanly; the message says what is wrong."""


def requirements_digest() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def ensure_venv() -> Path:
    """build/venv-docs with requirements-docs.txt installed; its Python."""
    python = VENV / "bin" / "python"
    stamp = VENV / "requirements-docs.sha256"
    digest = requirements_digest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return python
    if not python.exists():
        print(
            f"creating {VENV.relative_to(ROOT)} with Python {sys.version.split()[0]}",
            flush=True,
        )
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    stamp.unlink(missing_ok=True)
    print(
        f"installing the docs toolchain: pip install -r {REQUIREMENTS.name}", flush=True
    )
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)],
        check=True,
    )
    stamp.write_text(digest + "\n")
    return python


def our_pages() -> list[str]:
    """Our docs pages, as paths under docs/en/docs/."""
    prefix = DOCS + "/"
    return [
        f.removeprefix(prefix)
        for f in fork_backend.overlay_files()
        if f.startswith(prefix) and f.endswith(".md")
    ]


def oldest_python(pyproject: Path) -> str:
    """The oldest Python the package supports, from its requires-python (">=3.11")."""
    requires = tomllib.loads(pyproject.read_text())["project"]["requires-python"]
    match = re.fullmatch(r">=\s*(3\.\d+)(?:\.\d+)?", requires.strip())
    if match is None:
        raise DocsBuildError(
            f"{pyproject}: requires-python is {requires!r}; the tabs of the examples "
            "are labelled with its lower bound, so it must read >=3.N"
        )
    return match.group(1)


def page_title(markdown: str) -> str:
    match = re.search(r"^# (.+?)(?:\s*\{\s*#[^}]*\})?\s*$", markdown, re.MULTILINE)
    return match.group(1) if match else "Untitled"


def page_url(page: str) -> str:
    """The URL path of a page, as zensical writes it (directory URLs)."""
    stem = page.removesuffix(".md")
    if stem == "index":
        return ""
    return stem.removesuffix("/index") + "/"


def stage(src: Path, tree: Path | None) -> Path:
    """Lay out the docs to build in src; return the zensical config file."""
    if src.exists():
        shutil.rmtree(src)
    if tree is None:
        src.mkdir(parents=True)
        version = fork_backend.assemble(src)
    else:
        for folder in ("docs", "docs_src"):
            shutil.copytree(tree / folder, src / folder)
        shutil.copyfile(tree / "pyproject.toml", src / "pyproject.toml")
        version = "(from " + str(tree) + ")"
    docs = src / DOCS
    for page, title in UPSTREAM_PAGES.items():
        if not (docs / page).exists():
            (docs / page).parent.mkdir(parents=True, exist_ok=True)
            url = UPSTREAM_SITE + page_url(page)
            (docs / page).write_text(
                f"# {title}\n\nThis page is part of FastAPI's own documentation, "
                f"which this build does not include: read it at <{url}>.\n"
            )
    pages = our_pages()
    listing = "".join(
        f"* [{page_title((docs / page).read_text())}]({page})\n" for page in pages
    )
    (docs / "index.md").write_text(
        f"# FastAPI {version}\n\nThe pages this fork adds to FastAPI's documentation "
        f"(the rest is upstream's, at <{UPSTREAM_SITE}>):\n\n{listing}"
    )
    yaml: Any = importlib.import_module("yaml")
    config = yaml.safe_load(CONFIG.read_text())
    config.update(docs_dir="docs", site_dir="site", nav=["index.md", *pages])
    config["markdown_extensions"]["docs_include_variants"] = {
        "python": oldest_python(src / "pyproject.toml")
    }
    config_file = src / "docs" / "en" / "mkdocs.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    return config_file


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.levelname} {record.name}: {record.getMessage()}")


def render(config_file: Path) -> list[str]:
    """Run zensical's strict build; return what was logged at warning level or above."""
    zensical: Any = importlib.import_module("zensical")
    collect = _Collect()
    root = logging.getLogger()
    root.addHandler(collect)
    logging.captureWarnings(True)
    cwd = os.getcwd()
    # Include paths ("../../docs_src/...") are relative to docs/en/, as upstream's are.
    os.chdir(config_file.parent)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            zensical.build(str(config_file), {"strict": True, "clean": True})
    except Exception as exc:
        raise DocsBuildError(f"zensical build failed: {exc}") from None
    finally:
        os.chdir(cwd)
        logging.captureWarnings(False)
        root.removeHandler(collect)
    return collect.messages


def expected_highlights(options: str) -> set[int]:
    lines: set[int] = set()
    for spec in HIGHLIGHT.findall(options):
        for part in filter(None, (p.strip() for p in spec.split(","))):
            first, _, last = part.partition(":")
            lines.update(range(int(first), int(last or first) + 1))
    return lines


def code_blocks(page_html: str) -> list[tuple[str, set[int]]]:
    """Each code block of a rendered page: its text and its highlighted line numbers."""
    blocks = []
    for match in CODE_BLOCK.finditer(page_html):
        code = match["code"]
        text = html.unescape(re.sub(r"<[^>]+>", "", code))
        blocks.append((text, {int(n) for n in HIGHLIGHTED_LINE.findall(code)}))
    return blocks


def check_page(markdown: str, page_html: str, docs_en: Path) -> list[str]:
    """What is wrong with one rendered page (see the module docstring)."""
    problems = []
    article = page_html[page_html.find("<article") : page_html.find("</article>")]
    for leftover in LEFTOVER.findall(article):
        problems.append(f"left unrendered: {leftover!r}")
    blocks = code_blocks(article)
    for include in INCLUDE.finditer(markdown):
        directive = include.group(0)
        example = docs_en / include["path"]
        if not example.is_file():
            problems.append(f"{directive}: no such example")
            continue
        wanted = expected_highlights(include["options"])
        if "ln[" in include["options"]:
            # A partial include: its lines are renumbered, only the count is checked.
            found = any(len(lines) == len(wanted) for _, lines in blocks)
        else:
            source = example.read_text().rstrip("\n")
            found = any(
                text.rstrip("\n") == source and lines == wanted
                for text, lines in blocks
            )
        if not found:
            problems.append(
                f"{directive}: no code block with the example's source and exactly "
                f"the highlighted lines {sorted(wanted)}"
            )
    return problems


def build(output: Path, tree: Path | None = None) -> Path:
    """Build our docs pages into output/site; return that folder."""
    src, site = output / "src", output / "site"
    config_file = stage(src, tree)
    messages = render(config_file)
    if site.exists():
        shutil.rmtree(site)
    shutil.move(config_file.parent / "site", site)
    docs_en = src / "docs" / "en"
    problems = list(messages)
    for page in our_pages():
        page_html = (site / page_url(page) / "index.html").read_text()
        markdown = (docs_en / "docs" / page).read_text()
        problems.extend(
            f"{page}: {p}" for p in check_page(markdown, page_html, docs_en)
        )
    if problems:
        raise DocsBuildError("the docs build has problems:\n" + "\n".join(problems))
    print(f"built {len(our_pages())} pages of ours into {site}")
    return site


def serve(site: Path, port: int) -> None:
    # Ctrl-C stops it also where SIGINT was ignored when it started (as it is for
    # a background job of a non-interactive shell, and for what that job starts),
    # where Python would not turn it into a KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(site))
    with ThreadingHTTPServer(("127.0.0.1", port), handler) as server:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        print(f"serving {site} on {base} (Ctrl-C to stop)")
        for page in our_pages():
            print(f"page: {base}{page_url(page)}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("build", "serve"):
        command = sub.add_parser(name)
        command.add_argument("--output", type=Path, default=ROOT / "build" / "docs")
        if name == "build":
            command.add_argument("--tree", type=Path)
        else:
            command.add_argument("--port", type=int, default=8008)
    args = parser.parse_args(argv)
    try:
        python = ensure_venv()
    except subprocess.CalledProcessError as exc:
        sys.exit(f"error: could not install the docs toolchain: {exc}")
    if Path(sys.prefix).resolve() != VENV.resolve():
        # The toolchain lives in the venv: go on there.
        os.execv(python, [str(python), str(Path(__file__).resolve()), *argv])
    try:
        site = build(args.output.resolve(), getattr(args, "tree", None))
    except (DocsBuildError, fork_backend.ForkBuildError) as exc:
        sys.exit(f"error: {exc}")
    if args.command == "serve":
        serve(site, args.port)


if __name__ == "__main__":
    main()
