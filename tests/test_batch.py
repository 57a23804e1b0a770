"""Batch runs end to end (``vlpipe run detect INPUT --out DIR``, ``vlpipe eval``) on tiny models.

Covers: folder inputs with bad files, SIGKILL + resume, COCO/LVIS annotation-file inputs
(image ids, category mapping, unsafe file names, --save-vis), --max-failures, the eval CLI
on a synthetic LVIS-format dataset with hand-worked AP values, and the Python batch API
(:func:`vlpipe.batch.run`) on a test-only node type.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import supervision as sv
from PIL import Image
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from vlpipe.batch import (PREDICTIONS, RESULTS, MaxFailures, RunOptions, list_inputs, output_name,
                          read_predictions, run, write_results)
from vlpipe.cli import app
from vlpipe.pipeline import GraphError, Node, PipelineSpec, registry
from vlpipe.tiny.mllm import OBJECT_WORDS

FAST = ["--tiles", "1x1", "--questions", "1", "--set", "rounds=1"]


def write_image(path: Path, h: int, w: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def detect(tiny: Path, source: Path, out: Path, *extra: str):
    return cli("run", tiny / "detect.yaml", source, "--out", out, *FAST, *extra)


def check_detections(rec: dict) -> None:
    """Every detection of a good record: RLE of the image size, box inside the image."""
    h, w = rec["height"], rec["width"]
    for det in rec["detections"]:
        seg = det["segmentation"]
        assert seg["size"] == [h, w]
        mask = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()})
        assert mask.shape == (h, w)
        x, y, bw, bh = det["bbox"]
        assert 0 <= x and 0 <= y and bw >= 0 and bh >= 0
        assert x + bw <= w + 1e-3 and y + bh <= h + 1e-3
        assert isinstance(det["name"], str) and det["name"]
        assert np.isfinite(det["score"])


# -- (a) folder input -----------------------------------------------------------------------------

def test_folder_with_corrupt_and_non_image_files(tiny_models, tmp_path):
    src = tmp_path / "imgs"
    sizes = {"a.jpg": (64, 96), "b.png": (80, 64), "sub/c.jpg": (72, 72)}
    for k, (name, (h, w)) in enumerate(sizes.items()):
        write_image(src / name, h, w, seed=k)
    good_jpeg = (src / "a.jpg").read_bytes()
    (src / "corrupt.jpg").write_bytes(good_jpeg[:60])  # truncated JPEG
    (src / "sub" / "empty.png").write_bytes(b"")
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "out"

    res = detect(tiny_models, src, out)
    assert res.exit_code == 0, res.output
    assert "done 3, skipped 0" in res.output and "failed 2" in res.output

    records = read_predictions(out / PREDICTIONS)
    by_file = {r["file"]: r for r in records}
    assert len(records) == len(by_file) == 5  # one line per image file; notes.txt not listed
    assert set(by_file) == {*sizes, "corrupt.jpg", "sub/empty.png"}
    for name in ("corrupt.jpg", "sub/empty.png"):
        rec = by_file[name]
        assert rec["error"] and name.split("/")[-1] in rec["error"]
        assert rec["detections"] == []
        assert f"failed: {name}" in res.output
    assert "empty" in by_file["sub/empty.png"]["error"]
    for name, (h, w) in sizes.items():
        rec = by_file[name]
        assert rec["error"] is None and (rec["height"], rec["width"]) == (h, w)
        assert rec["image_id"] is None
        check_detections(rec)
    assert sum(len(by_file[n]["detections"]) for n in sizes) > 0
    assert not (out / RESULTS).exists()  # no image ids: no COCO results

    # the same command again: everything is skipped, nothing is appended
    again = detect(tiny_models, src, out)
    assert again.exit_code == 0, again.output
    assert "done 0, skipped 5" in again.output and "failed 0" in again.output
    assert len(read_predictions(out / PREDICTIONS)) == 5

    # --retry-failed: the failures run again (one is fixed now); their new lines supersede
    write_image(src / "corrupt.jpg", 40, 56, seed=9)
    retry = detect(tiny_models, src, out, "--retry-failed")
    assert retry.exit_code == 0, retry.output
    assert "done 1, skipped 3" in retry.output and "failed 1" in retry.output
    lines = (out / PREDICTIONS).read_text().splitlines()
    assert len(lines) == 7  # append-only: 5 + the 2 retried
    records = read_predictions(out / PREDICTIONS)
    by_file = {r["file"]: r for r in records}
    assert len(records) == 5 and set(by_file) == {*sizes, "corrupt.jpg", "sub/empty.png"}
    fixed = by_file["corrupt.jpg"]
    assert fixed["error"] is None and (fixed["height"], fixed["width"]) == (40, 56)
    check_detections(fixed)
    assert "empty" in by_file["sub/empty.png"]["error"]


# -- (b) SIGKILL and resume -----------------------------------------------------------------------

def test_killed_run_resumes_with_every_image_once(tiny_models, tmp_path):
    src = tmp_path / "imgs"
    names = [f"{'sub/' if k % 3 == 0 else ''}img{k}.jpg" for k in range(8)]
    for k, name in enumerate(names):
        write_image(src / name, 96, 128, seed=k)
    out = tmp_path / "out"
    preds = out / PREDICTIONS
    cmd = [sys.executable, "-c", "from vlpipe.cli import app; app()", "run",
           str(tiny_models / "detect.yaml"), str(src), "--out", str(out), "--batch-size", "1", *FAST]

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if preds.exists() and preds.read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed: " + \
            proc.stderr.read().decode(errors="replace")[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    done_before = read_predictions(preds)
    assert 2 <= len(done_before) < len(names)
    with open(preds, "ab") as f:  # as if killed in the middle of writing a line
        f.write(b'{"file": "img7.jpg", "image_id": null, "width": 12')

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"skipped {len(done_before)}" in rerun.stderr

    lines = preds.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]  # every line parses
    assert sorted(r["file"] for r in records) == sorted(names)  # each image exactly once
    assert all(r["error"] is None for r in records)
    assert records[: len(done_before)] == done_before  # earlier lines kept as they were


# -- (c) COCO/LVIS annotation-file input ----------------------------------------------------------

def lvis_categories() -> list[dict]:
    """Every word the tiny MLLM can say, as a category (``dog`` only as a synonym of
    ``canine``), with LVIS frequencies."""
    cats = []
    for k, word in enumerate(OBJECT_WORDS):
        name = "canine" if word == "dog" else word
        cats.append({"id": 100 + k, "name": name, "synonyms": [name, word] if name != word else [name],
                     "frequency": "rcf"[k % 3], "image_count": 1, "instance_count": 1})
    return cats


def test_annotation_file_input(tiny_models, tmp_path):
    root = tmp_path / "images"
    files = {7: ("a.jpg", 64, 96), 42: ("nested/dir/x y#1.jpg", 80, 64)}
    for k, (name, h, w) in files.items():
        write_image(root / name, h, w, seed=k)
    # LVIS v1 style: no file_name, the split folder is in coco_url
    write_image(root / "val2017" / "000000000013.jpg", 72, 72, seed=13)
    images = [{"id": k, "file_name": name, "height": h, "width": w,
               "not_exhaustive_category_ids": [], "neg_category_ids": [101]}
              for k, (name, h, w) in files.items()]
    images.append({"id": 13, "height": 72, "width": 72, "not_exhaustive_category_ids": [],
                   "neg_category_ids": [],
                   "coco_url": "http://images.cocodataset.org/val2017/000000000013.jpg"})
    cats = lvis_categories()
    anns = [{"id": 1, "image_id": 7, "category_id": 100, "bbox": [1, 2, 30, 20], "area": 600}]
    gt = {"images": images, "annotations": anns, "categories": cats}
    ann_file = tmp_path / "lvis.json"
    ann_file.write_text(json.dumps(gt))
    out = tmp_path / "out"
    before = {p for p in tmp_path.rglob("*")}

    res = detect(tiny_models, ann_file, out, "--images", root, "--save-vis", "--batch-size", "2")
    assert res.exit_code == 0, res.output
    assert "done 3" in res.output and "failed 0" in res.output

    records = read_predictions(out / PREDICTIONS)
    assert sorted(r["image_id"] for r in records) == [7, 13, 42]
    by_id = {r["image_id"]: r for r in records}
    for k, (name, h, w) in files.items():
        assert by_id[k]["file"] == name and (by_id[k]["height"], by_id[k]["width"]) == (h, w)
    assert by_id[13]["file"] == "val2017/000000000013.jpg"
    for rec in records:
        check_detections(rec)

    # results.json: COCO results, ids from the file, categories mapped by name / synonym
    results = json.loads((out / RESULTS).read_text())
    ids = {syn: c["id"] for c in cats for syn in c["synonyms"]}
    expected = sorted((r["image_id"], ids[d["name"]], d["score"], tuple(d["bbox"]))
                      for r in records for d in r["detections"])
    assert expected, "the tiny model found nothing"
    assert sorted((r["image_id"], r["category_id"], r["score"], tuple(r["bbox"]))
                  for r in results) == expected
    for r in results:
        assert set(r) == {"image_id", "category_id", "bbox", "score", "segmentation"}
        assert r["image_id"] in files or r["image_id"] == 13

    # --save-vis: one flat, sanitized file per image under out/vis
    vis = sorted(p.relative_to(out / "vis").as_posix() for p in (out / "vis").rglob("*"))
    assert vis == sorted(output_name(r["file"], ".jpg") for r in records)
    digest = hashlib.sha1(b"nested/dir/x y#1.jpg").hexdigest()[:8]
    assert f"x_y_1-{digest}.jpg" in vis
    # nothing written outside the output folder
    assert all(p.is_relative_to(out) for p in set(tmp_path.rglob("*")) - before)

    # names without an exact match: CLIP text similarity, top-k, similarity folded into the score
    other = {**gt, "categories": [{"id": 1, "name": "zebra", "frequency": "r"},
                                  {"id": 2, "name": "giraffe", "frequency": "c"},
                                  {"id": 3, "name": "kite", "frequency": "f"}]}
    results = json.loads(write_results(out, other, clip=str(tiny_models / "clip_text"), top_k=2)
                         .read_text())
    dets = [(r["image_id"], d) for r in records for d in r["detections"]]
    assert len(results) == 2 * len(dets)
    for (image_id, d), pair in zip(dets, zip(results[::2], results[1::2])):
        assert [r["image_id"] for r in pair] == [image_id, image_id]
        assert len({r["category_id"] for r in pair}) == 2
        for r in pair:
            assert abs(r["score"]) <= d["score"] + 1e-9  # score x cosine similarity


@pytest.mark.parametrize("bad", ["../../evil.jpg", "/etc/passwd"])
def test_annotation_file_name_outside_root_is_rejected(tiny_models, tmp_path, bad):
    root = tmp_path / "data" / "images"
    write_image(root / "ok.jpg", 32, 32)
    write_image(tmp_path / "evil.jpg", 32, 32)
    gt = {"images": [{"id": 1, "file_name": "ok.jpg"}, {"id": 2, "file_name": bad}],
          "annotations": [], "categories": [{"id": 1, "name": "dog"}]}
    ann_file = tmp_path / "data" / "ann.json"
    ann_file.write_text(json.dumps(gt))
    before = {p for p in tmp_path.rglob("*")}
    res = detect(tiny_models, ann_file, tmp_path / "out", "--images", root)
    assert res.exit_code == 2
    assert "outside the image root" in res.output and bad in res.output
    assert {p for p in tmp_path.rglob("*")} == before  # nothing written anywhere
    with pytest.raises(ValueError, match="outside the image root"):
        list_inputs(ann_file, root)


def test_image_root_made_of_symbolic_links(tiny_models, tmp_path):
    store = tmp_path / "store"
    write_image(store / "a.jpg", 32, 40, seed=1)
    write_image(store / "deep" / "b.jpg", 36, 30, seed=2)
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.jpg").symlink_to(store / "a.jpg")
    (root / "sub").symlink_to(store / "deep", target_is_directory=True)
    gt = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "sub/b.jpg"},
                     {"id": 3, "file_name": "sub/../../store/a.jpg"}],
          "annotations": [], "categories": [{"id": 1, "name": "dog"}]}
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({**gt, "images": gt["images"][:2]}))
    res = detect(tiny_models, ann, tmp_path / "out", "--images", root)
    assert res.exit_code == 0, res.output
    assert "done 2" in res.output and "failed 0" in res.output
    # a name that climbs out of the root is still refused, symbolic links or not
    ann.write_text(json.dumps(gt))
    with pytest.raises(ValueError, match="outside the image root"):
        list_inputs(ann, root)


def test_duplicate_image_ids_and_file_names(tiny_models, tmp_path):
    root = tmp_path / "images"
    write_image(root / "a.jpg", 32, 40, seed=1)
    write_image(root / "b.jpg", 36, 30, seed=2)
    cats = [{"id": 1, "name": "dog"}]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 7, "file_name": "a.jpg"},
                                          {"id": 7, "file_name": "b.jpg"}],
                               "annotations": [], "categories": cats}))
    res = detect(tiny_models, ann, tmp_path / "out", "--images", root)
    assert res.exit_code == 2 and "image id(s) listed more than once: 7" in res.output
    assert not (tmp_path / "out").exists()

    # one file under two ids: each id gets its record (none is dropped), and resume knows both
    ann.write_text(json.dumps({"images": [{"id": 7, "file_name": "a.jpg"},
                                          {"id": 8, "file_name": "a.jpg"}],
                               "annotations": [], "categories": cats}))
    res = detect(tiny_models, ann, tmp_path / "out", "--images", root)
    assert res.exit_code == 0 and "done 2" in res.output, res.output
    records = read_predictions(tmp_path / "out" / PREDICTIONS)
    assert sorted((r["file"], r["image_id"]) for r in records) == [("a.jpg", 7), ("a.jpg", 8)]
    assert records[0]["detections"] == records[1]["detections"]
    again = detect(tiny_models, ann, tmp_path / "out", "--images", root)
    assert "done 0, skipped 2" in again.output


# -- (d) vlpipe eval on a synthetic LVIS-format dataset ---------------------------------------------

H, W = 240, 320
BOXES = {1: [(1, [10, 10, 100, 100]), (2, [150, 120, 100, 100])],
         2: [(1, [200, 30, 100, 100])],
         3: [(2, [20, 100, 100, 100])]}


def rle(box: list[int]) -> dict:
    x, y, w, h = box
    m = np.zeros((H, W), np.uint8, order="F")
    m[y:y + h, x:x + w] = 1
    r = mask_utils.encode(m)
    return {"size": [H, W], "counts": r["counts"].decode("ascii")}


def synthetic_lvis() -> dict:
    images = [{"id": i, "file_name": f"{i}.jpg", "height": H, "width": W,
               "not_exhaustive_category_ids": [], "neg_category_ids": []} for i in BOXES]
    anns = [{"id": n, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3],
             "iscrowd": 0, "segmentation": rle(b)}
            for n, (i, c, b) in enumerate(((i, c, b) for i, bs in BOXES.items() for c, b in bs), 1)]
    cats = [{"id": 1, "name": "dog", "synonyms": ["dog"], "frequency": "f"},
            {"id": 2, "name": "person", "synonyms": ["person"], "frequency": "c"}]
    return {"images": images, "annotations": anns, "categories": cats}


def predictions(shift: int) -> list[dict]:
    out = []
    for n, (i, bs) in enumerate(BOXES.items()):
        for k, (c, (x, y, w, h)) in enumerate(bs):
            box = [x + shift, y, w, h]
            out.append({"image_id": i, "category_id": c, "bbox": box, "score": 0.9 - 0.1 * n - 0.01 * k,
                        "segmentation": rle(box)})
    return out


@pytest.mark.parametrize("lvis", [True, False])
@pytest.mark.parametrize("shift", [0, 20])
def test_eval_cli_hand_worked_values(tmp_path, lvis, shift):
    gt = synthetic_lvis()
    if not lvis:  # plain COCO: no LVIS fields
        gt["categories"] = [{"id": c["id"], "name": c["name"]} for c in gt["categories"]]
        for im in gt["images"]:
            del im["not_exhaustive_category_ids"], im["neg_category_ids"]
    for i, bs in BOXES.items():  # synthetic images too, so the dataset is complete
        write_image(tmp_path / "images" / f"{i}.jpg", H, W, seed=i)
    (tmp_path / "ann.json").write_text(json.dumps(gt))
    out = tmp_path / "run"
    out.mkdir()
    (out / RESULTS).write_text(json.dumps(predictions(shift)))

    res = cli("eval", out, "--gt", tmp_path / "ann.json", "--json")
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout)
    assert set(metrics) == {"bbox", "segm"}
    for m in metrics.values():
        assert ({"APc", "APf"} <= set(m)) == lvis and "APr" not in m  # no rare categories
        if shift == 0:
            assert m["AP"] == pytest.approx(1.0) and m["AR"] == pytest.approx(1.0)
        else:
            # 100x100 boxes shifted by 20 px: IoU = 80/120 = 2/3, a match at thresholds
            # 0.50..0.65 (4 of 10) and a false positive + a miss above: AP = 0.4
            assert m["AP"] == pytest.approx(0.4)
            assert m["AP50"] == pytest.approx(1.0) and m["AP75"] == pytest.approx(0.0)

    text = cli("eval", out / RESULTS, "--gt", tmp_path / "ann.json")
    assert text.exit_code == 0 and text.stdout.startswith("bbox: AP ")


def test_eval_cli_errors(tmp_path):
    (tmp_path / "ann.json").write_text(json.dumps(synthetic_lvis()))
    res = cli("eval", tmp_path, "--gt", tmp_path / "ann.json")
    assert res.exit_code == 2 and "no results file" in res.output
    (tmp_path / RESULTS).write_text("[{")  # a broken results file
    res = cli("eval", tmp_path, "--gt", tmp_path / "ann.json")
    assert res.exit_code == 2 and "results.json" in res.output


# -- (e) --max-failures ---------------------------------------------------------------------------

def test_max_failures_stops_the_run(tiny_models, tmp_path):
    src = tmp_path / "imgs"
    (src / "0_bad.jpg").parent.mkdir(parents=True)
    (src / "0_bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (src / "1_bad.jpg").write_bytes(b"")
    write_image(src / "2_good.jpg", 32, 32)
    out = tmp_path / "out"
    res = detect(tiny_models, src, out, "--max-failures", "1")
    assert res.exit_code != 0
    assert "--max-failures 1" in res.output and "0_bad.jpg" in res.output
    records = read_predictions(out / PREDICTIONS)
    assert [r["file"] for r in records] == ["0_bad.jpg"]  # stopped at the first failure
    assert records[0]["error"]

    # a tolerant rerun resumes: the failure is kept, the others are run
    res = detect(tiny_models, src, out, "--max-failures", "3")
    assert res.exit_code == 0, res.output
    assert "done 1, skipped 1" in res.output and "failed 1" in res.output


def test_output_names_are_flat_distinct_and_keep_one_suffix():
    names = ["a.jpg", "a.png", "a/b.jpg", "a_b.jpg", "../../etc/passwd", "/abs/x.jpg",
             "/work/data/images/dog.jpg"]
    outs = [output_name(n, ".jpg") for n in names]
    assert len(set(outs)) == len(names)  # same stem, other folder or suffix: no overwrite
    for name, out in zip(names, outs):
        assert "/" not in out and not out.startswith(".") and out.endswith(".jpg")
        assert out.count(".jpg") == 1
        assert out.endswith(f"-{hashlib.sha1(name.encode()).hexdigest()[:8]}.jpg")
    # named after the file, not its whole path
    assert [o.rsplit("-", 1)[0] for o in outs] == ["a", "a", "b", "a_b", "passwd", "x", "dog"]


# -- (f) the Python API: vlpipe.batch.run ---------------------------------------------------------

class WholeImageBox(Node):
    """Test-only: one detection ``thing`` covering the image, score 0.5; fails on an image
    whose top-left pixel is (1, 2, 3)."""

    inputs = {"image": "image"}
    outputs = {"detections": "detections"}

    def run(self, batch):
        outs = []
        for item in batch:
            image = item["image"]
            if tuple(image[0, 0]) == (1, 2, 3):
                raise RuntimeError("poisoned pixel")
            h, w = image.shape[:2]
            outs.append({"detections": sv.Detections(
                xyxy=np.array([[0, 0, w, h]], np.float32), confidence=np.array([0.5]),
                data={"class_name": np.array(["thing"])})})
        return outs


BOX_SPEC = {"name": "box", "inputs": {"image": "image"},
            "nodes": {"box": {"type": "whole_image_box", "in": {"image": "input.image"}}},
            "outputs": {"detections": "box.detections"}}


@pytest.fixture
def box_spec() -> PipelineSpec:
    registry.register("whole_image_box", WholeImageBox)
    return PipelineSpec.model_validate(BOX_SPEC)


def test_run_api_writes_resumes_and_isolates(box_spec, tmp_path):
    src = tmp_path / "imgs"
    sizes = {"a.png": (20, 30), "b.png": (24, 16), "c.png": (10, 12), "d.png": (8, 8)}
    for k, (name, (h, w)) in enumerate(sizes.items()):
        write_image(src / name, h, w, seed=k)
    poisoned = np.asarray(Image.open(src / "c.png")).copy()
    poisoned[0, 0] = (1, 2, 3)
    Image.fromarray(poisoned).save(src / "c.png")
    (src / "e.png").write_bytes(b"not a png")
    entries, _ = list_inputs(src)
    out = tmp_path / "out"
    calls = []

    summary = run(box_spec, {}, entries[:4], out, RunOptions(batch_size=3),
                  progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
    assert (summary.done, summary.failed, summary.skipped) == (3, 1, 0)
    # the node's calls: [a b c] fails, then a, b, c alone (c fails again), then [d]
    assert [(e.items, e.failed) for e in summary.trace.events] == \
        [(3, True), (1, False), (1, False), (1, True), (1, False)]
    records = {r["file"]: r for r in read_predictions(out / PREDICTIONS)}
    for name in ("a.png", "b.png", "d.png"):
        h, w = sizes[name]
        assert records[name] == {"file": name, "image_id": None, "width": w, "height": h,
                                 "error": None, "detections": [
                                     {"name": "thing", "bbox": [0.0, 0.0, w, h], "score": 0.5}]}
    assert records["c.png"]["error"] == \
        "node 'box' failed: RuntimeError: poisoned pixel"

    # resume: the four recorded entries are skipped; the undecodable one is a failure line
    calls.clear()
    summary = run(box_spec, {}, entries, out, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(0, 1), (1, 1)]
    assert (summary.done, summary.failed, summary.skipped) == (0, 1, 4)
    assert "e.png" in summary.errors[0]
    # --retry-failed as an option, stopped by max_failures after the first failure
    with pytest.raises(MaxFailures) as stopped:
        run(box_spec, {}, entries, out, RunOptions(retry_failed=True, max_failures=1))
    assert (stopped.value.summary.failed, stopped.value.summary.skipped) == (1, 3)
    assert len((out / PREDICTIONS).read_text().splitlines()) == 6


def test_batch_runs_need_a_detections_output(box_spec, tiny_models, tmp_path):
    write_image(tmp_path / "imgs" / "a.jpg", 16, 16)
    entries, _ = list_inputs(tmp_path / "imgs")
    out = tmp_path / "out"
    no_detections = PipelineSpec.model_validate(
        {**BOX_SPEC, "outputs": {"boxes": "box.detections"}})
    with pytest.raises(GraphError, match="pipeline 'box' has no 'detections' output"):
        run(no_detections, {}, entries, out)
    assert not out.exists()  # checked before the output folder is made
    res = cli("run", tiny_models / "ask.yaml", tmp_path / "imgs", "--out", out)
    assert res.exit_code == 2
    assert "pipeline 'ask' has no 'detections' output: batch runs need one" in res.output
    assert "pipeline 'ask' takes 'image', 'question': batch runs give it one input" in res.output
    with pytest.raises(GraphError, match="pipeline 'ground' takes 'image', 'phrases'"):
        run(tiny_models / "ground.yaml", {}, entries, out)  # detections, but needs phrases
    assert not out.exists()


def test_prefetch_keeps_order_reraises_and_stops_its_thread_when_abandoned():
    import threading

    from vlpipe.batch import prefetch

    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        raise OSError("disk gone")

    it = prefetch(failing())
    assert next(it) == 1
    with pytest.raises(OSError, match="disk gone"):
        next(it)
    before = threading.active_count()
    produced = []

    def endless():
        k = 0
        while True:
            produced.append(k)
            yield k
            k += 1

    gen = prefetch(endless(), depth=2)
    assert next(gen) == 0
    gen.close()  # the consumer stops early: the producer thread must end, not block forever
    assert threading.active_count() <= before
    assert len(produced) <= 5
