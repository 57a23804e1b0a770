"""Shared fixtures. Tests never reach the network."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

BENCH = str(Path(__file__).resolve().parents[1] / "bench")


def import_bench(*names: str) -> list:
    """The modules ``names`` of bench/, imported with bench/ on sys.path only meanwhile
    (bench/ray.py must not shadow the ray package for the other tests)."""
    sys.path.insert(0, BENCH)
    try:
        return [importlib.import_module(n) for n in names]
    finally:
        while BENCH in sys.path:
            sys.path.remove(BENCH)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """Folder with every tiny random-weight model plus ``<recipe>.yaml`` (built once)."""
    from vlpipe.tiny import build_all

    folder = tmp_path_factory.mktemp("tiny")
    build_all(folder)
    return folder


IMAGES = Path(__file__).resolve().parent / "data" / "images"


@pytest.fixture(scope="session")
def shared_images() -> Path:
    """The real test images shipped in tests/data/images (sources and licences in SOURCES.md)."""
    return IMAGES
