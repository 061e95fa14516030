"""Fixtures shared by the tooling tests."""

import os
import shutil
from pathlib import Path

import fork_backend
import pytest


@pytest.fixture
def links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """
    Make pip's only source a local find-links folder (holding the pinned sdist) and
    the fork's sdist cache an empty folder, so the build's nested pip download runs
    for real, fast and without the network.
    """
    sdist = fork_backend.fetch_sdist(fork_backend.read_upstream())
    folder = tmp_path / "links"
    folder.mkdir()
    shutil.copyfile(sdist, folder / sdist.name)
    for name in list(os.environ):
        if name.startswith(("PIP_", "FASTAPI_FORK_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    monkeypatch.setenv("FASTAPI_FORK_CACHE", str(tmp_path / "empty-cache"))
    return folder
