"""Shared fixtures. Tests never reach the network."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import supervision as sv

os.environ["HF_HUB_OFFLINE"] = "1"

BENCH = str(Path(__file__).resolve().parents[1] / "bench")


def import_bench(*names: str) -> list:
    """The modules ``names`` of bench/, imported with bench/ on sys.path only meanwhile."""
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


@pytest.fixture(scope="session")
def ground_cli(tiny_models, shared_images):
    """``run(backend)``: ``vlpipe run ground cat_dog.jpeg "a dog. a cat." --json`` on the tiny
    model of that grounding backend, every box kept; returns the JSON detections."""
    import json

    from typer.testing import CliRunner

    from vlpipe.cli import app

    def run(backend: str) -> list[dict]:
        res = CliRunner().invoke(app, ["run", str(tiny_models / "ground.yaml"),
                                       str(shared_images / "cat_dog.jpeg"), "a dog. a cat.",
                                       "--set", f"grounding_backend={backend}",
                                       "--set", f"grounding={tiny_models / backend}",
                                       "--set", "box_threshold=0.0", "--json"])
        assert res.exit_code == 0, res.stderr
        return json.loads(res.stdout)["detections"]

    return run


def dets(boxes, scores, names, view_box=(0, 0, 100, 100), **data) -> sv.Detections:
    """Hand-made detections: (N, 4) xyxy boxes, N scores and names, one ``view_box``, more
    ``data`` fields."""
    n = len(boxes)
    return sv.Detections(xyxy=np.array(boxes, np.float32).reshape(-1, 4),
                         confidence=np.array(scores, np.float32),
                         data={"class_name": np.array(names),
                               "view_box": np.tile(np.array(view_box), (n, 1)), **data})
