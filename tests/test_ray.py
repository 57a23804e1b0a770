"""The Ray engine (issue 8): a local Ray instance (CPU only, 2 workers) runs the tiny detect
pipeline; its predictions match the local engine's, resume gives every image once, a dead worker
is replaced and its images retried."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from vlpipe.batch import PREDICTIONS, RunOptions, list_inputs, run

PARAMS = {"tiles": "1x1", "questions": 1, "rounds": 1}


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("ray_images")
    (root / "sub").mkdir()
    rng = np.random.default_rng(0)
    for k in range(10):
        h, w = 40 + 6 * k, 64 - 2 * k
        path = root / ("sub" if k % 3 == 0 else ".") / f"img{k:02d}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    (root / "broken.jpg").write_bytes(b"not an image at all")
    # a file name that is not UTF-8 (issue 13): a line of its own, not a stopped run
    odd = Path(os.fsdecode(os.fsencode(root) + b"/caf\xe9.png"))
    Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(odd)
    return root


@pytest.fixture(scope="module")
def local_out(tiny_models, folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local_out")
    entries, _ = list_inputs(folder)
    run(tiny_models / "detect.yaml", PARAMS, entries, out)
    return out


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / PREDICTIONS).read_text().splitlines()]


def _assert_same(ours: list[dict], ref: list[dict]) -> None:
    ours_by, ref_by = {r["file"]: r for r in ours}, {r["file"]: r for r in ref}
    assert len(ours_by) == len(ours), "an image was written twice"
    assert ours_by.keys() == ref_by.keys()
    for file, rec in ref_by.items():
        got = ours_by[file]
        for key in ("image_id", "width", "height", "error"):
            assert got[key] == rec[key], (file, key)
        assert len(got["detections"]) == len(rec["detections"]), file
        for a, b in zip(got["detections"], rec["detections"]):
            assert a["name"] == b["name"], file
            assert np.allclose(a["bbox"], b["bbox"], atol=1e-3), file
            assert abs(a["score"] - b["score"]) <= 1e-4, file
            assert a.get("segmentation") == b.get("segmentation"), file


def ray_options(**engine) -> RunOptions:
    from vlpipe.batch import RayEngine

    return RunOptions(engine=RayEngine(**engine))


def test_same_predictions_as_local_engine(ray_local, tiny_models, folder, local_out, tmp_path):
    from vlpipe.pipeline import PipelineSpec

    entries, _ = list_inputs(folder)
    spec = PipelineSpec.load(tiny_models / "detect.yaml")
    spec.params.update(PARAMS)  # only in memory: the actors get this spec, not the file
    summary = run(spec, {}, entries, tmp_path, ray_options(workers=2))
    ours, ref = _records(tmp_path), _records(local_out)
    _assert_same(ours, ref)
    assert any(r["detections"] for r in ours)
    assert (summary.done, summary.failed, summary.skipped) == (11, 1, 0)
    assert [e.split(":")[0] for e in summary.errors] == ["broken.jpg"]
    broken = next(r for r in ours if r["file"] == "broken.jpg")
    assert broken["error"] and broken["width"] is None and broken["detections"] == []
    assert next(r for r in ours if r["file"] == "caf\\xe9.png")["error"] is None
    assert 1 <= len(summary.worker_init_seconds) <= 2
    assert summary.first_result_seconds is not None


def test_interrupted_run_resumes_through_cli(ray_local, tiny_models, folder, local_out, tmp_path):
    """A run killed half-way (half the lines written, a torn last line) resumed with
    ``vlpipe run ... --engine ray``: every image exactly once, the finished ones not redone."""
    from typer.testing import CliRunner

    from vlpipe.cli import app

    ref = _records(local_out)
    lines = (local_out / PREDICTIONS).read_text().splitlines(keepends=True)
    half = lines[: len(lines) // 2]
    (tmp_path / PREDICTIONS).write_text("".join(half) + lines[len(half)][:25])  # torn line
    result = CliRunner().invoke(app, [
        "run", str(tiny_models / "detect.yaml"), str(folder), "--out", str(tmp_path),
        "--engine", "ray", "--workers", "2", "--tiles", "1x1", "--questions", "1",
        "--rounds", "1"])
    assert result.exit_code == 0, result.output
    assert f"skipped {len(half)}" in result.output
    ours = _records(tmp_path)
    assert [json.dumps(r) for r in ours[: len(half)]] == [line.rstrip("\n") for line in half]
    _assert_same(ours, ref)


@pytest.fixture
def crash_once(monkeypatch, tmp_path) -> Path:
    """A marker file; the first Ray actor to find it removes it and dies hard (the actor class
    is swapped for a subclass defined here, which Ray pickles by value)."""
    from vlpipe.batch import ray_engine

    marker = tmp_path / "crash-once"
    marker.touch()

    class CrashingWorker(ray_engine.PipelineWorker):
        def __call__(self, batch):
            try:
                os.remove(marker)
            except FileNotFoundError:
                return super().__call__(batch)
            os._exit(1)

    monkeypatch.setattr(ray_engine, "PipelineWorker", CrashingWorker)
    return marker


def test_dead_worker_is_replaced_and_its_images_retried(ray_local, tiny_models, folder,
                                                        local_out, tmp_path, crash_once):
    entries, _ = list_inputs(folder)
    out = tmp_path / "out"
    summary = run(tiny_models / "detect.yaml", PARAMS, entries, out,
                  ray_options(workers=2, max_retries=2))
    assert not crash_once.exists(), "no worker died"
    assert (summary.done, summary.failed) == (11, 1)
    _assert_same(_records(out), _records(local_out))


def test_retries_are_bounded(ray_local, tiny_models, folder, tmp_path, crash_once):
    from vlpipe.batch import RayRunError

    entries, _ = list_inputs(folder)
    with pytest.raises(RayRunError, match="run again to resume"):
        run(tiny_models / "detect.yaml", PARAMS, entries, tmp_path / "out",
            ray_options(workers=1, max_retries=0))
    assert not crash_once.exists(), "no worker died"


def test_without_ray_says_how_to_install(monkeypatch, tiny_models, folder, tmp_path):
    from typer.testing import CliRunner

    from vlpipe.cli import app
    from vlpipe.batch import RayNotInstalled, import_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(RayNotInstalled, match=r"pip install 'vlpipe\[ray\]'"):
        import_ray()
    result = CliRunner().invoke(app, ["run", str(tiny_models / "detect.yaml"), str(folder),
                                      "--out", str(tmp_path), "--engine", "ray"])
    assert result.exit_code == 2
    assert "pip install 'vlpipe[ray]'" in result.output
    result = CliRunner().invoke(app, ["run", str(tiny_models / "detect.yaml"), str(folder),
                                      "--out", str(tmp_path), "--engine", "ray",
                                      "--trace", str(tmp_path / "trace.json")])
    assert result.exit_code == 2 and "--trace records the local engine" in result.output
    assert not (tmp_path / "trace.json").exists()


def test_detect_branches_on_ray_as_locally(ray_local, tiny_models, folder, tmp_path):
    """The four-branch recipe (issue 27) on three images: the Ray engine writes what the local
    one does."""
    from vlpipe.pipeline import PipelineSpec

    entries = [e for e in list_inputs(folder)[0] if e.path.name != "broken.jpg"][:3]
    spec = PipelineSpec.load(tiny_models / "detect-branches.yaml")
    run(spec, {}, entries, tmp_path / "local")
    summary = run(spec, {}, entries, tmp_path / "ray", ray_options(workers=2))
    assert (summary.done, summary.failed) == (3, 0)
    _assert_same(_records(tmp_path / "ray"), _records(tmp_path / "local"))
