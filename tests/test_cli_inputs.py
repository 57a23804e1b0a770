"""The command line against the inputs and mistakes of issue 13's fault probe, each through a
real ``python -m vlpipe`` process on tiny models: every input gets a line or a reported skip,
nothing is written outside --out, outputs are never read back as inputs, one run per --out,
and every user mistake is one ``error:`` line."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vlpipe.pipeline import GraphError, Pipeline
from vlpipe.runner import PREDICTIONS, collect_inputs, lock_output, read_predictions

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--tiles", "1x1", "--questions", "1", "--set", "rounds=1"]


def vlpipe(*args, cwd: Path | None = None, env: dict | None = None,
           unprivileged: bool = False) -> subprocess.CompletedProcess:
    """``python -m vlpipe ARGS`` on this checkout; ``unprivileged``: without root's power to
    write anywhere (so a read-only folder is read-only for the test too)."""
    cmd = [sys.executable, "-m", "vlpipe", *map(str, args)]
    if unprivileged and os.geteuid() == 0:
        assert shutil.which("setpriv"), "running as root: setpriv is needed to drop the override"
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *cmd]
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": path, **(env or {})})


def write_image(path: Path, seed: int = 0, h: int = 48, w: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def detect(tiny: Path, source: Path, *extra, **kw) -> subprocess.CompletedProcess:
    return vlpipe("run", tiny / "detect.yaml", source, *FAST, *extra, **kw)


@pytest.fixture
def two_images(tmp_path) -> Path:
    src = tmp_path / "imgs"
    write_image(src / "a.png", 1)
    write_image(src / "sub" / "b.jpg", 2)
    return src


# 1 ------------------------------------------------------------------------------------------

def test_file_name_that_is_not_utf8_gets_its_line_and_resumes(tiny_models, two_images, tmp_path):
    write_image(Path(os.fsdecode(os.fsencode(two_images) + b"/caf\xe9.png")), 3)
    out = tmp_path / "out"
    first = detect(tiny_models, two_images, "--out", out)
    assert first.returncode == 0, first.stderr
    assert "done 3, skipped 0" in first.stderr and "failed 0" in first.stderr
    files = {r["file"] for r in read_predictions(out / PREDICTIONS)}
    assert files == {"a.png", "sub/b.jpg", "caf\\xe9.png"}  # the odd byte as an escape
    again = detect(tiny_models, two_images, "--out", out)
    assert again.returncode == 0, again.stderr
    assert "done 0, skipped 3" in again.stderr


# 2 ------------------------------------------------------------------------------------------

def test_outputs_inside_the_input_folder_are_never_read_back(tiny_models, two_images):
    out = two_images / "out"
    pictures = ["--save-vis", "--save-attention"]
    first = detect(tiny_models, two_images, "--out", out, *pictures)
    assert first.returncode == 0, first.stderr
    assert "done 2, skipped 0" in first.stderr
    assert list((out / "vis").iterdir()) and list((out / "attention").iterdir())
    rerun = detect(tiny_models, two_images, "--out", out, *pictures)
    assert rerun.returncode == 0, rerun.stderr
    assert "done 0, skipped 2" in rerun.stderr  # not the pictures of the first run
    assert f"skipped '{out}': a vlpipe output folder" in rerun.stderr
    assert {r["file"] for r in read_predictions(out / PREDICTIONS)} == {"a.png", "sub/b.jpg"}
    # an earlier run's output folder is left out of another run's scan too
    assert collect_inputs(two_images, out=two_images / "other").output_folders == [out]


# 3 ------------------------------------------------------------------------------------------

def test_single_image_pictures_go_under_vlpipe_out(tiny_models, shared_images, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(shared_images / "dog.jpg", folder / "dog.jpg")
    (folder / "dog_vis.jpg").write_bytes(b"the user's own file")
    before = files_under(folder)
    res = detect(tiny_models, folder / "dog.jpg", "--save-vis", "--save-attention", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["file"] == str(folder / "dog.jpg")
    assert files_under(folder) == before  # nothing written beside the input
    vis = list((tmp_path / "vlpipe-out" / "vis").iterdir())
    assert len(vis) == 1 and vis[0].name.startswith("dog-")  # named after the file only
    assert list((tmp_path / "vlpipe-out" / "attention").glob("dog-*.jpg"))

    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    res = detect(tiny_models, folder / "dog.jpg", "--save-vis", cwd=read_only, unprivileged=True)
    assert res.returncode == 2 and res.stdout == ""  # refused before anything ran
    assert "error: cannot write to --out 'vlpipe-out': Permission denied" in res.stderr
    assert "Traceback" not in res.stderr


# 6 ------------------------------------------------------------------------------------------

def test_wrong_image_root_is_an_error_and_missing_images_run_once_found(tiny_models, tmp_path):
    root = tmp_path / "images"
    write_image(root / "a.jpg", 1)
    write_image(root / "b.jpg", 2)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
        "annotations": [], "categories": [{"id": 1, "name": "dog"}]}))
    out = tmp_path / "out"

    wrong = detect(tiny_models, ann, "--images", tmp_path / "wrong", "--out", out)
    assert wrong.returncode == 2
    assert "error: none of the 2 images" in wrong.stderr and "--images" in wrong.stderr
    assert not out.exists()

    (root / "b.jpg").rename(tmp_path / "b.jpg")
    partial = detect(tiny_models, ann, "--images", root, "--out", out)
    assert partial.returncode == 0, partial.stderr
    assert "done 1," in partial.stderr and "failed 1" in partial.stderr
    assert "1 image file(s) not found" in partial.stderr
    scored = vlpipe("eval", out, "--gt", ann)
    assert scored.returncode == 0, scored.stderr
    assert "note: 1 of 2 images of this run failed (first: b.jpg" in scored.stderr

    (tmp_path / "b.jpg").rename(root / "b.jpg")
    fixed = detect(tiny_models, ann, "--images", root, "--out", out)
    assert "done 1, skipped 1" in fixed.stderr, fixed.stderr
    records = read_predictions(out / PREDICTIONS)
    assert sorted(r["image_id"] for r in records) == [1, 2]
    assert all(r["error"] is None for r in records)


# 7 ------------------------------------------------------------------------------------------

def test_one_run_per_output_folder(tiny_models, two_images, tmp_path):
    out = tmp_path / "out"
    with lock_output(out):  # as if another run were writing there
        res = detect(tiny_models, two_images, "--out", out)
    assert res.returncode == 2
    assert f"error: another vlpipe run is writing to '{out}' (pid {os.getpid()})" in res.stderr
    assert not (out / PREDICTIONS).exists()


# 9 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("option, message", [
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--top-k", "0"], "--top-k must be at least 1, got 0"),
    (["--max-failures", "0"], "--max-failures must be at least 1, got 0"),
    (["--engine", "ray", "--workers", "0"], "--workers must be at least 1, got 0"),
    (["--set", "max_new_tokens=-1"], "max_new_tokens must be 1..4096, got -1"),
])
def test_bad_numbers_are_refused_before_anything_runs(tiny_models, two_images, tmp_path, option,
                                                      message):
    out = tmp_path / "out"
    res = detect(tiny_models, two_images, "--out", out, *option)
    assert res.returncode == 2 and "error: " in res.stderr and message in res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists()


def test_max_new_tokens_has_an_upper_bound(tiny_models):
    with pytest.raises(GraphError, match="max_new_tokens must be 1..4096, got 100000"):
        Pipeline.load(tiny_models / "ask.yaml", max_new_tokens=100_000)


# 10 -----------------------------------------------------------------------------------------

def corrupt_middle_line(out: Path) -> None:
    out.mkdir()
    good = {"file": "a.png", "image_id": None, "width": 1, "height": 1, "error": None,
            "detections": []}
    (out / PREDICTIONS).write_text(json.dumps(good) + "\n{garbage\n"
                                   + json.dumps({**good, "file": "sub/b.jpg"}) + "\n")


@pytest.mark.parametrize("case", ["out is a file", "out is read-only", "bad --set YAML",
                                  "corrupt predictions line", "eval results lack keys"])
def test_user_mistakes_are_one_error_line(tiny_models, two_images, tmp_path, case):
    out = tmp_path / "out"
    if case == "out is a file":
        out.write_text("a file")
        res, expected = detect(tiny_models, two_images, "--out", out), \
            f"error: --out '{out}' is not a folder"
    elif case == "out is read-only":
        out.mkdir(mode=0o555)
        res, expected = detect(tiny_models, two_images, "--out", out, unprivileged=True), \
            f"error: cannot write to --out '{out}': Permission denied"
    elif case == "bad --set YAML":
        res, expected = detect(tiny_models, two_images, "--out", out, "--set", "tiles=[2"), \
            "error: --set 'tiles=[2': the value is not valid YAML"
    elif case == "corrupt predictions line":
        corrupt_middle_line(out)
        res, expected = detect(tiny_models, two_images, "--out", out), \
            f"error: '{out / PREDICTIONS}' line 2 is not a JSON record"
    else:
        (tmp_path / "gt.json").write_text(json.dumps(
            {"images": [{"id": 1}], "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
        (tmp_path / "results.json").write_text(json.dumps([{"image_id": 1}]))
        res, expected = vlpipe("eval", tmp_path / "results.json", "--gt", tmp_path / "gt.json"), \
            "result 0 has neither bbox nor segmentation"
    assert res.returncode == 2, res.stderr
    assert expected in res.stderr and "Traceback" not in res.stderr
    assert res.stderr.strip().count("\n") == 0  # one line


def test_disk_full_is_an_error_line_and_keeps_what_was_written(tiny_models, two_images, tmp_path,
                                                              monkeypatch):
    import vlpipe.batch
    from vlpipe.cli import app

    write = vlpipe.batch.append_record
    written = []

    def fill_up(sink, record):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(sink, record)
        written.append(record)

    monkeypatch.setattr(vlpipe.batch, "append_record", fill_up)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["run", str(tiny_models / "detect.yaml"), str(two_images),
                                   "--out", str(out), "--batch-size", "1", *FAST])
    assert res.exit_code == 2, res.output
    assert "error: writing under" in res.stderr and "No space left on device" in res.stderr
    assert "run again to resume" in res.stderr
    assert [r["file"] for r in read_predictions(out / PREDICTIONS)] == ["a.png"]


# 11 -----------------------------------------------------------------------------------------

def test_folder_scan_takes_every_image_format_and_reports_the_rest(tiny_models, tmp_path):
    src = tmp_path / "imgs"
    write_image(src / "a.gif", 1)
    write_image(src / "b.png", 2)
    (src / "notes.txt").write_text("not an image")
    res = detect(tiny_models, src, "--out", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    assert "done 2, skipped 0" in res.stderr
    assert "skipped 1 file(s) that are not images: 'notes.txt'" in res.stderr

    (src / "a.gif").unlink()
    (src / "b.png").unlink()
    empty = detect(tiny_models, src, "--out", tmp_path / "out2")
    assert empty.returncode == 2
    assert f"error: no image files in folder '{src}' (1 other file(s), e.g. 'notes.txt')" \
        in empty.stderr
    assert not (tmp_path / "out2").exists()


# the hub -----------------------------------------------------------------------------------

def test_unreachable_hub_fails_fast_with_the_weights_message(shared_images, tmp_path):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()  # the kernel accepts connections; nothing ever replies
        env = {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_HOME": str(tmp_path),
               "HF_ENDPOINT": f"http://127.0.0.1:{server.getsockname()[1]}"}
        res = vlpipe("run", "detect", shared_images / "dog.jpg", "--tiles", "1x1", env=env)
    assert res.returncode == 2
    assert "cannot load the MLLM model 'llava-hf/llava-1.5-7b-hf'" in res.stderr
    assert "cannot be reached" in res.stderr and "hf download llava-hf/llava-1.5-7b-hf" in res.stderr
    assert "Retrying" not in res.stderr  # no minutes of retries first
