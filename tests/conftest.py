"""Shared fixtures. Tests never reach the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """Folder with every tiny random-weight model plus ``<recipe>.yaml`` (built once)."""
    from vlpipe.tiny import build_all

    folder = tmp_path_factory.mktemp("tiny")
    build_all(folder)
    return folder


@pytest.fixture(scope="session")
def shared_images() -> Path:
    """The real test images in ../shared/data/images (see SOURCES.md there), or the folder
    named by ``VLPIPE_TEST_IMAGES`` (a machine where ../shared is not mounted)."""
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "images"
    folder = Path(os.environ.get("VLPIPE_TEST_IMAGES", default))
    if not folder.is_dir():
        pytest.skip(f"shared test images not found at {folder}")
    return folder
