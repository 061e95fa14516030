"""Tests of the fork's build backend and developer tooling (not of FastAPI)."""

import email
import email.policy
import io
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import fork
import fork_backend
import pytest
from fork_backend import ROOT, ForkBuildError


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of this repository's build inputs to break on purpose."""
    copy = tmp_path / "repo"
    copy.mkdir()
    shutil.copyfile(ROOT / "pyproject.toml", copy / "pyproject.toml")
    shutil.copytree(ROOT / "patches", copy / "patches")
    for rel in fork_backend.overlay_files(ROOT):
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, copy / rel)
    return copy


def test_pin_is_one_exact_release():
    upstream = fork_backend.read_upstream()
    assert upstream.name == "fastapi"
    assert upstream.requirement == f"fastapi==={upstream.version}"
    assert len(upstream.sha256) == 64


def test_assemble_marks_the_version(tmp_path: Path):
    version = fork_backend.assemble(tmp_path)
    upstream = fork_backend.read_upstream()
    assert version.startswith(f"{upstream.version}+lifespan.")
    assert f'version = "{version}"' in (tmp_path / "pyproject.toml").read_text()


def test_stale_patch_stops_the_build(repo: Path, tmp_path: Path):
    patch = fork_backend.patch_files(repo)[0]
    text = patch.read_text()
    # The context line the hunk expects no longer matches upstream.
    patch.write_text(text.replace(" from starlette import status", " from starlette import statuz"))
    with pytest.raises(ForkBuildError, match=f"(?s){patch.name} does not apply.*stale"):
        fork_backend.assemble(tmp_path / "out", root=repo)


def test_changed_upstream_file_stops_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    sdist = fork_backend.fetch_sdist(fork_backend.read_upstream())
    changed = tmp_path / sdist.name
    changed.write_bytes(sdist.read_bytes() + b"\0")
    monkeypatch.setenv("FASTAPI_FORK_UPSTREAM_SDIST", str(changed))
    with pytest.raises(ForkBuildError, match="has sha256 .* but pyproject.toml pins"):
        fork_backend.assemble(tmp_path / "out")


def test_missing_local_sdist_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FASTAPI_FORK_UPSTREAM_SDIST", str(tmp_path / "nope.tar.gz"))
    with pytest.raises(ForkBuildError, match="does not exist"):
        fork_backend.fetch_sdist(fork_backend.read_upstream())


def test_download_ignores_what_the_frontend_set_for_itself(
    links: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # pip 26.3 runs this backend with its in-tree path in
    # _PYPROJECT_HOOKS_BACKEND_PATH_JSON; inherited, the nested pip looked for
    # pdm.backend there only ("Cannot find module 'pdm.backend' in [.../scripts]").
    monkeypatch.setenv("_PYPROJECT_HOOKS_BACKEND_PATH_JSON", '["/nonexistent"]')
    monkeypatch.setenv("_PYPROJECT_HOOKS_BUILD_BACKEND", "fork_backend")
    monkeypatch.setenv("PEP517_BACKEND_PATH", "/nonexistent")
    monkeypatch.setenv("PEP517_BUILD_BACKEND", "fork_backend")
    tracker = tmp_path / "outer-pip-tracker"
    tracker.mkdir()
    monkeypatch.setenv("PIP_BUILD_TRACKER", str(tracker))
    upstream = fork_backend.read_upstream()
    sdist = fork_backend.fetch_sdist(upstream)
    assert sdist == tmp_path / "empty-cache" / upstream.sdist_name
    assert sdist.read_bytes() == (links / upstream.sdist_name).read_bytes()


def test_download_ignores_the_users_constraints(
    links: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # The user's constraints (here pinning fastapi to the fork) are for their own
    # installs, not for fetching the pristine release.
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("fastapi==0.165.0+lifespan.1\n")
    monkeypatch.setenv("PIP_CONSTRAINT", str(constraints))
    upstream = fork_backend.read_upstream()
    assert fork_backend.fetch_sdist(upstream).name == upstream.sdist_name


def test_nested_pip_environment_keeps_the_users_configuration():
    environ = {
        "PATH": "/build-env/bin:/usr/bin",
        "PYTHONPATH": "/tmp/pip-build-env-x/site",
        "PIP_INDEX_URL": "https://mirror.example/simple",
        "PIP_CERT": "/etc/ssl/certs/ca.pem",
        "HTTPS_PROXY": "http://proxy.example:3128",
        "_PYPROJECT_HOOKS_BACKEND_PATH_JSON": '["/repo/scripts"]',
        "PEP517_BACKEND_PATH": "/repo/scripts",
        "PIP_BUILD_TRACKER": "/tmp/pip-build-tracker-x",
        "PIP_CONSTRAINT": "constraints.txt",
        "PIP_PYTHON": "/usr/bin/python3.9",
    }
    assert fork_backend.nested_pip_environment(environ) == {
        "PATH": "/build-env/bin:/usr/bin",
        "PYTHONPATH": "/tmp/pip-build-env-x/site",
        "PIP_INDEX_URL": "https://mirror.example/simple",
        "PIP_CERT": "/etc/ssl/certs/ca.pem",
        "HTTPS_PROXY": "http://proxy.example:3128",
    }


def test_unreachable_index_is_reported_with_the_offline_hint(
    links: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("PIP_NO_INDEX")
    monkeypatch.delenv("PIP_FIND_LINKS")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("PIP_RETRIES", "0")
    with pytest.raises(ForkBuildError) as error:
        fork_backend.fetch_sdist(fork_backend.read_upstream())
    message = str(error.value)
    assert "the package index could not be reached" in message
    assert "Could not fetch URL http://127.0.0.1:9/fastapi/" in message
    assert "pip said:\n  ERROR: " in message
    assert "set FASTAPI_FORK_UPSTREAM_SDIST" in message


def test_hash_mismatch_is_reported_as_such(
    links: Path, repo: Path, tmp_path: Path
):
    pyproject = repo / "pyproject.toml"
    upstream = fork_backend.read_upstream(repo)
    pyproject.write_text(pyproject.read_text().replace(upstream.sha256, "0" * 64))
    with pytest.raises(ForkBuildError) as error:
        fork_backend.assemble(tmp_path / "out", root=repo)
    message = str(error.value)
    assert "does not have the sha256 pyproject.toml pins" in message
    assert "DO NOT MATCH THE HASHES" in message  # pip's own words
    assert "FASTAPI_FORK_UPSTREAM_SDIST" not in message


def test_release_missing_from_the_index_is_reported(
    links: Path, monkeypatch: pytest.MonkeyPatch
):
    for sdist in links.iterdir():
        sdist.unlink()
    with pytest.raises(ForkBuildError) as error:
        fork_backend.fetch_sdist(fork_backend.read_upstream())
    message = str(error.value)
    assert "was reached but has no sdist of fastapi 0.165.0" in message
    assert "No matching distribution found for fastapi===0.165.0" in message
    assert "FASTAPI_FORK_UPSTREAM_SDIST" not in message


def test_nested_pip_failing_is_reported_with_its_message(
    links: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("PIP_USE_FEATURE", "no-such-feature")
    with pytest.raises(ForkBuildError) as error:
        fork_backend.fetch_sdist(fork_backend.read_upstream())
    message = str(error.value)
    assert re.search(r"the nested 'pip download' failed \(exit code \d+\)", message)
    assert "no-such-feature" in message
    assert "FASTAPI_FORK_UPSTREAM_SDIST" not in message


def test_unpack_without_tar_filters_gives_the_same_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # Python < 3.11.4 (Debian 12's 3.11.2) has no filter= for tarfile.extract.
    sdist = fork_backend.fetch_sdist(fork_backend.read_upstream())
    fork_backend.unpack_sdist(sdist, tmp_path / "filtered")
    monkeypatch.setattr(fork_backend, "HAS_TAR_FILTERS", False)
    fork_backend.unpack_sdist(sdist, tmp_path / "plain")
    assert fork.compare_trees(tmp_path / "filtered", tmp_path / "plain") == []
    for path in (tmp_path / "filtered").rglob("*"):
        twin = tmp_path / "plain" / path.relative_to(tmp_path / "filtered")
        assert path.stat().st_mode == twin.stat().st_mode, path
        if path.is_file():
            assert path.stat().st_mtime == twin.stat().st_mtime, path


def _tar_with(tmp_path: Path, member: tarfile.TarInfo) -> Path:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        top = tarfile.TarInfo("evil-1.0")
        top.type = tarfile.DIRTYPE
        tar.addfile(top)
        content = b"x" if member.isfile() else b""
        member.size = len(content)
        tar.addfile(member, io.BytesIO(content))
    return archive


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = link
    return member


@pytest.mark.parametrize(
    "member",
    [
        _member("evil-1.0/../../escaped"),
        _member("evil-1.0//tmp/absolute"),
        _member("evil-1.0/link", tarfile.SYMTYPE, "/etc/passwd"),
        _member("evil-1.0/link", tarfile.SYMTYPE, "../../escaped"),
        _member("evil-1.0/hard", tarfile.LNKTYPE, "/etc/passwd"),
        _member("evil-1.0/fifo", tarfile.FIFOTYPE),
    ],
    ids=["dotdot", "absolute", "symlink-absolute", "symlink-dotdot", "hardlink", "fifo"],
)
def test_unpack_without_tar_filters_refuses_what_leaves_the_folder(
    member: tarfile.TarInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(fork_backend, "HAS_TAR_FILTERS", False)
    archive = _tar_with(tmp_path, member)
    dest = tmp_path / "a" / "b" / "dest"
    dest.mkdir(parents=True)
    with pytest.raises(ForkBuildError, match="refusing to unpack it"):
        fork_backend.unpack_sdist(archive, dest)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "dest", "evil.tar.gz"]


def test_new_file_may_not_replace_an_upstream_file(repo: Path, tmp_path: Path):
    (repo / "fastapi").mkdir(exist_ok=True)
    (repo / "fastapi" / "routing.py").write_text("# a copy\n")
    with pytest.raises(ForkBuildError, match="fastapi/routing.py exists in upstream"):
        fork_backend.assemble(tmp_path / "out", root=repo)


def test_series_must_mark_the_version(repo: Path, tmp_path: Path):
    for patch in fork_backend.patch_files(repo):
        patch.unlink()
    with pytest.raises(ForkBuildError, match=r"must mark it as '0\.165\.0\+lifespan\.N'"):
        fork_backend.assemble(tmp_path / "out", root=repo)


def test_pr_export_applies_with_git_am_on_pristine_source(tmp_path: Path):
    out = tmp_path / "pr"
    fork.main(
        [
            "pr",
            "--output",
            str(out),
            "--author",
            "Ada Lovelace <ada@example.com>",
            "--date",
            "2026-11-25T10:00:00Z",
        ]
    )
    patches = sorted(out.glob("*.patch"))
    texts = [p.read_text() for p in patches]
    # Fork packaging (the version mark) and fork vocabulary stay out.
    for text in texts:
        assert fork.NOT_FOR_UPSTREAM not in text
        assert "Upstream-Status" not in text
        assert "From: Ada Lovelace <ada@example.com>" in text
        assert "Date: Wed, 25 Nov 2026 10:00:00 +0000" in text
    subjects = [
        str(email.message_from_string(t, policy=email.policy.default)["Subject"])
        for t in texts
    ]
    # FastAPI's convention: one gitmoji, then the imperative title.
    assert all(re.match(r"\[PATCH \d+/\d+\] [^\x00-\x7f]+ [A-Z]", s) for s in subjects), (
        subjects
    )
    # The new module comes just before the first patch that imports it.
    module_commit = next(i for i, t in enumerate(texts) if "b/fastapi/dependencies/lifespan.py" in t)
    assert "fastapi.dependencies.lifespan" not in "".join(texts[:module_commit])
    assert "from fastapi.dependencies.lifespan import" in texts[module_commit + 1]
    # Fork-only tests are not part of it.
    assert not any("test_dependency_lifespan_scope_servers" in t for t in texts)
    assert not any("test_dependency_lifespan_scope_properties" in t for t in texts)
    # Nor the PostgreSQL fixture, the asyncpg example, its test and its section of
    # the page (which is there, without it).
    assert not any("b/tests/conftest.py" in t for t in texts)
    assert not any("tutorial008" in t for t in texts)
    assert not any("fork-only" in t or "asyncpg" in t for t in texts)
    assert any("lifespan-scoped-dependencies.md" in t for t in texts)
    assert (out / "PR.md").read_text() == (ROOT / "docs" / "pr" / "PR.md").read_text()
    pristine = tmp_path / "pristine"
    pristine.mkdir()
    fork_backend.unpack_sdist(
        fork_backend.fetch_sdist(fork_backend.read_upstream()), pristine
    )
    # The sdist has no docs/en/mkdocs.yml: these are the lines of upstream's nav
    # (main branch, 2026) around the place of the new page, with a line before
    # and after them that the PR doesn't know.
    nav = pristine / "docs" / "en" / "mkdocs.yml"
    nav.write_text(
        "nav:\n"
        "      - tutorial/dependencies/dependencies-in-path-operation-decorators.md\n"
        "      - tutorial/dependencies/global-dependencies.md\n"
        "      - tutorial/dependencies/dependencies-with-yield.md\n"
        '    - "":\n'
        "      - tutorial/security/index.md\n"
        "      - tutorial/security/first-steps.md\n"
        "      - tutorial/security/get-current-user.md\n"
    )
    fork.git(pristine, "init", "-q")
    fork.git(pristine, "add", "-A")
    fork.git(pristine, "commit", "-q", "-m", "fastapi 0.165.0")
    fork.git(pristine, "am", "--3way", "--quiet", *map(str, patches))
    assert nav.read_text().splitlines()[3:6] == [
        "      - tutorial/dependencies/dependencies-with-yield.md",
        "      - tutorial/dependencies/lifespan-scoped-dependencies.md",
        '    - "":',
    ]
    # The nav entry is part of the docs commit.
    assert "b/docs/en/mkdocs.yml" in texts[-1]
    assert "b/docs/en/mkdocs.yml" not in "".join(texts[:-1])
    expected = tmp_path / "expected"
    fork.build_pr_tree(expected, fork.pr_identity("A <a@example.com>", None))
    # Only the nav differs outside the excerpt.
    assert fork.compare_trees(expected, pristine) == ["docs/en/mkdocs.yml"]
    assert (expected / "docs" / "en" / "mkdocs.yml").read_text().splitlines()[
        3:10
    ] == nav.read_text().splitlines()[1:-1]
    assert "lifespan" in (pristine / "fastapi" / "params.py").read_text()


def test_add_to_nav_needs_the_entry_it_follows(tmp_path: Path):
    (tmp_path / "docs" / "en").mkdir(parents=True)
    (tmp_path / "docs" / "en" / "mkdocs.yml").write_text("nav:\n  - index.md\n")
    with pytest.raises(ForkBuildError, match="no nav entry"):
        fork.add_to_nav(tmp_path, ["tutorial/page.md"])


PAGE_WITH_FORK_ONLY_BLOCKS = """\
# Title

Shared text.

<!-- fork-only -->

## Fork only

{* ../../docs_src/topic/tutorial008.py *}

<!-- /fork-only -->

More shared text.
<!-- fork-only -->
Also fork only.
<!-- /fork-only -->
The end.
"""


def test_pr_pages_leave_out_their_fork_only_blocks():
    assert fork.without_fork_only_blocks(PAGE_WITH_FORK_ONLY_BLOCKS, "page.md") == (
        "# Title\n\nShared text.\n\nMore shared text.\nThe end.\n"
    )
    assert fork.without_fork_only_blocks("No block.\n", "page.md") == "No block.\n"


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "a\n<!-- fork-only -->\nb\n",
            "page.md, line 2: the fork-only block is never closed",
        ),
        ("a\n<!-- /fork-only -->\n", "page.md, line 2: <!-- /fork-only --> closes no"),
        (
            "<!-- fork-only -->\n<!-- fork-only -->\n<!-- /fork-only -->\n",
            "page.md, line 2: <!-- fork-only --> inside the fork-only block opened "
            "on line 1",
        ),
    ],
    ids=["unclosed", "closes nothing", "nested"],
)
def test_pr_refuses_unbalanced_fork_only_markers(text: str, message: str):
    with pytest.raises(ForkBuildError, match=re.escape(message)):
        fork.without_fork_only_blocks(text, "page.md")


def test_pr_author_defaults_to_the_git_identity(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Grace Hopper")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "grace@example.com")
    identity = fork.pr_identity(None, None)
    assert identity["GIT_AUTHOR_NAME"] == identity["GIT_COMMITTER_NAME"] == "Grace Hopper"
    assert identity["GIT_AUTHOR_EMAIL"] == "grace@example.com"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", identity["GIT_AUTHOR_DATE"])
    with pytest.raises(ForkBuildError, match="must be 'Name <email>'"):
        fork.pr_identity("nobody", None)


def round_trip_differences(tmp_path: Path) -> list[str]:
    """Build a work tree from the repository, export it, compare with the repository."""
    tree = tmp_path / "tree"
    fork.build_work_tree(tree)
    out = tmp_path / "out"
    fork.export_work_tree(tree, out)
    committed = tmp_path / "committed"
    fork.committed_layout(ROOT, committed)
    return fork.compare_trees(committed, out)


def test_export_round_trips(tmp_path: Path):
    assert round_trip_differences(tmp_path) == []


def test_export_refuses_uncommitted_work(tmp_path: Path):
    tree = tmp_path / "tree"
    fork.build_work_tree(tree)
    (tree / "fastapi" / "utils.py").write_text("changed\n")
    with pytest.raises(ForkBuildError, match="uncommitted changes"):
        fork.export_work_tree(tree, tmp_path / "out")


def test_export_refuses_new_files_outside_the_overlay(tmp_path: Path):
    tree = tmp_path / "tree"
    fork.build_work_tree(tree)
    (tree / "setup.py").write_text("")
    fork.git(tree, "add", "setup.py")
    fork.git(tree, "commit", "-q", "-m", "stray")
    with pytest.raises(ForkBuildError, match="new files outside"):
        fork.export_work_tree(tree, tmp_path / "out")


def test_our_lines_counts_added_and_changed_lines(tmp_path: Path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    (old / "a.py").write_text("x = 1\ny = 2\nz = 3\n")
    (new / "a.py").write_text("x = 1\ny = 20\nw = 0\nz = 3\n")
    (old / "same.py").write_text("a = 1\n")
    (new / "same.py").write_text("a = 1\n")
    (new / "b.py").write_text("b = 1\nc = 2\n")
    assert fork.our_lines(old, new) == {"a.py": {2, 3}, "b.py": {1, 2}}


def test_statement_of_maps_continuation_lines():
    source = (
        "x = f(\n    1,\n)\n"
        "try:\n    pass\nexcept (\n    ValueError\n):\n    pass\n"
        "match x:\n    case 1:\n        if x:\n            pass\n"
    )
    first_line = fork.statement_of(source)
    assert first_line(2) == 1 and first_line(3) == 1
    assert first_line(7) == 6 and first_line(8) == 6
    assert first_line(12) == 12


def _wheel(directory: Path) -> zipfile.ZipFile:
    (wheel,) = directory.glob("*.whl")
    return zipfile.ZipFile(wheel)


def test_wheel_is_a_drop_in_fastapi(tmp_path: Path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
    )
    wheel = _wheel(tmp_path)
    version = fork_backend.assemble(tmp_path / "tree")
    assert Path(wheel.filename).name == f"fastapi-{version}-py3-none-any.whl"
    meta = email.message_from_bytes(wheel.read(f"fastapi-{version}.dist-info/METADATA"))
    upstream_sdist = fork_backend.fetch_sdist(fork_backend.read_upstream())
    with tarfile.open(upstream_sdist) as tar:
        (pkg_info,) = (m for m in tar.getmembers() if m.name.endswith("/PKG-INFO"))
        upstream_meta = email.message_from_bytes(tar.extractfile(pkg_info).read())
    assert meta["Name"] == "fastapi"
    assert meta["Version"] == version
    for field in ("Requires-Dist", "Provides-Extra", "Requires-Python", "License-Expression"):
        assert meta.get_all(field) == upstream_meta.get_all(field), field
    entry_points = wheel.read(f"fastapi-{version}.dist-info/entry_points.txt").decode()
    assert "fastapi = fastapi.cli:main" in entry_points
    assert f'__version__ = "{version}"' in wheel.read("fastapi/__init__.py").decode()


def test_sdist_round_trips_to_the_same_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    sdist_name = fork_backend.build_sdist(str(tmp_path / "sdist"))
    wheel_name = fork_backend.build_wheel(str(tmp_path / "direct"))
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    fork_backend.unpack_sdist(tmp_path / "sdist" / sdist_name, unpacked)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path / "from-sdist"), str(unpacked)],
        check=True,
    )
    direct = _wheel(tmp_path / "direct")
    from_sdist = _wheel(tmp_path / "from-sdist")
    assert Path(from_sdist.filename).name == wheel_name
    assert sorted(direct.namelist()) == sorted(from_sdist.namelist())
    for name in direct.namelist():
        if not name.endswith("RECORD"):
            assert direct.read(name) == from_sdist.read(name), name


def test_fork_version_satisfies_requirements_on_fastapi(tmp_path: Path):
    from packaging.requirements import Requirement

    version = fork_backend.assemble(tmp_path)
    for requirement in ("fastapi>=0.100", "fastapi[standard]", "fastapi==0.165.0"):
        assert Requirement(requirement).specifier.contains(version), requirement
    # The build itself asks for the exact upstream release, never the fork.
    upstream = Requirement(fork_backend.read_upstream().requirement)
    assert not upstream.specifier.contains(version)
    assert upstream.specifier.contains("0.165.0")


def test_series_must_mark_both_versions(repo: Path, tmp_path: Path):
    patch = fork_backend.patch_files(repo)[0]
    text = patch.read_text()
    marked = text.index('+version = "')
    end = text.index("\n", marked)
    patch.write_text(text[:marked] + '+version = "0.165.0+lifespan.0"' + text[end:])
    with pytest.raises(ForkBuildError, match="the first patch must mark both"):
        fork_backend.assemble(tmp_path / "out", root=repo)


def test_export_refuses_to_undo_changes_it_has_not_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    tree = tmp_path / "tree"
    fork.build_work_tree(tree)
    monkeypatch.setattr(fork, "WORK_TREE", tree)
    (tree / fork.FINGERPRINT).write_text("built from an older repository")
    with pytest.raises(SystemExit, match="changed since the work tree was"):
        fork.main(["export"])


def test_tooling_ignores_the_developers_git_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    config = tmp_path / "gitconfig"
    config.write_text("[diff]\n\tnoprefix = true\n\talgorithm = histogram\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    assert round_trip_differences(tmp_path) == []


def test_work_tree_ignores_what_tests_leave_behind(tmp_path: Path):
    tree = tmp_path / "tree"
    fork.build_work_tree(tree)
    (tree / "fastapi" / "__pycache__").mkdir()
    (tree / "fastapi" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"")
    (tree / ".coverage.host.1").write_text("")
    fork.export_work_tree(tree, tmp_path / "out")
