"""Same image, pipeline and weights, same bytes (issue 23). The tiny detect-fused pipeline over
one folder with batch sizes 1 and 8, with batches of irregular sizes in reversed order (as a
prefetch handing over whatever is ready would form them), and on Ray, all while two other
processes load both cores; every image's line of ``predictions.jsonl`` must be the same bytes.

The load runs at the lowest priority: it takes every idle moment of both cores, so the runs'
threads are preempted and their batches form at other times, without slowing the test to
minutes (at normal priority, with 3 views instead of 5, it passed too, in 4 minutes on 2 shared
cores). The ask pipeline's items batched must give the bytes each gets alone."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vlpipe.batch import PREDICTIONS, LocalEngine, RunOptions, list_inputs, local_engine, run
from vlpipe.pipeline import ModelPool

PARAMS: dict = {}  # the tiny recipe: full image + 2x2 tiles, 2 questions, 3 SAM rounds
LOAD_SECONDS = 600  # the load processes end by themselves even if the test is killed


@pytest.fixture(scope="module")
def folder(tmp_path_factory, shared_images) -> Path:
    """3 real photos and 4 random images of other sizes (one tall, one small)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("same_bytes")
    for name in ("cat_dog.jpeg", "dog.jpg", "en.jpg"):
        shutil.copy(shared_images / name, root / name)
    rng = np.random.default_rng(23)
    for k, (h, w) in enumerate([(48, 80), (120, 40), (33, 33), (64, 200)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / f"r{k}.png")
    return root


@pytest.fixture(scope="module")
def busy_cores():
    """Two processes spinning on the CPU (both cores of the test machine) for the module, at
    the lowest priority."""
    spin = (f"import os, time\nos.nice(19)\nend = time.time() + {LOAD_SECONDS}\n"
            "while time.time() < end: pass")
    procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _lines(out: Path) -> dict[str, str]:
    """predictions.jsonl's lines by file name, each once."""
    lines = (out / PREDICTIONS).read_text(encoding="utf-8").splitlines()
    by_file = {json.loads(line)["file"]: line for line in lines}
    assert len(by_file) == len(lines), "an image was written twice"
    return by_file


def _irregular_chunks(sizes):
    """A stand-in for ``vlpipe.batch.local_engine._chunks`` that cuts batches of ``sizes`` in turn."""
    def chunks(items, size):
        items, k = list(items), 0
        for n in sizes * len(items):
            if k >= len(items):
                return
            yield items[k:k + n]
            k += n
    return chunks


def test_same_bytes_whatever_batch_engine_or_load(tiny_models, folder, busy_cores, tmp_path,
                                                  monkeypatch):
    import torch

    assert all(p.poll() is None for p in busy_cores), "the load processes are not running"
    entries, _ = list_inputs(folder)
    spec = tiny_models / "detect-fused.yaml"
    threads = torch.get_num_threads()
    pool = ModelPool()  # the local runs load each model once

    run(spec, PARAMS, entries, tmp_path / "b1", RunOptions(batch_size=1, pool=pool))
    assert torch.get_num_threads() == threads, "the run left torch's thread count changed"
    run(spec, PARAMS, entries, tmp_path / "b8", RunOptions(batch_size=8, pool=pool))
    with monkeypatch.context() as patch:
        patch.setattr(local_engine, "_chunks", _irregular_chunks([2, 1, 4]))
        run(spec, PARAMS, entries[::-1], tmp_path / "irregular",
            RunOptions(batch_size=3, pool=pool, engine=LocalEngine(prefetch_depth=1)))
    outs = ["b1", "b8", "irregular"]

    ray = pytest.importorskip("ray")
    from vlpipe.batch import RayEngine

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        run(spec, PARAMS, entries, tmp_path / "ray",
            RunOptions(batch_size=2, engine=RayEngine(workers=2)))
    finally:
        ray.shutdown()
    outs.append("ray")

    assert all(p.poll() is None for p in busy_cores), "the load stopped before the runs ended"
    ref = _lines(tmp_path / "b1")
    assert len(ref) == len(entries) == 7
    records = [json.loads(line) for line in ref.values()]
    assert all(r["error"] is None for r in records)
    assert sum(bool(r["detections"]) for r in records) >= 5
    for out in outs[1:]:
        lines = _lines(tmp_path / out)
        assert lines.keys() == ref.keys(), out
        differ = [f for f in ref if lines[f] != ref[f]]
        assert not differ, f"{out}: other bytes than batch size 1 for {differ}"


def test_ask_answers_each_item_as_alone(tiny_models, shared_images):
    """The ask pipeline over three (image, question) items in one batch gives each the bytes it
    gets alone (its MLLM prompts are not left-padded to the others', its image not grounded in
    a batch padded to the largest)."""
    from vlpipe.batch import torch_threads
    from vlpipe.io import load_image
    from vlpipe.pipeline import Pipeline
    from vlpipe.results import jsonable

    pipe = Pipeline.load(tiny_models / "ask.yaml", policy="always")
    items = [{"image": load_image(shared_images / "dog.jpg"), "question": "What animal is it?"},
             {"image": load_image(shared_images / "en.jpg"),
              "question": "What is written on the long sign at the top of the picture?"},
             {"image": load_image(shared_images / "cat_dog.jpeg"), "question": "Cat?"}]

    def as_json(result) -> str:
        assert result.error is None, result.error
        return json.dumps({k: jsonable(v) for k, v in result.outputs.items()})

    with torch_threads(1):
        together = [as_json(r) for r in pipe.run_batch(items)]
        alone = [as_json(pipe.run(**item)) for item in items]
    assert together == alone
