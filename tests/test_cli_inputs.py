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
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vlpipe.batch import PREDICTIONS, collect_inputs, lock_output, read_predictions
from vlpipe.pipeline import GraphError, Pipeline

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
    (["--threads", "0"], "--threads must be at least 1, got 0"),
    (["--set", "max_new_tokens=-1"], "max_new_tokens must be 1..4096, got -1"),
])
def test_bad_numbers_are_refused_before_anything_runs(tiny_models, two_images, tmp_path, option,
                                                      message):
    out = tmp_path / "out"
    res = detect(tiny_models, two_images, "--out", out, *option)
    assert res.returncode == 2 and "error: " in res.stderr and message in res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists()


def test_ray_engine_on_one_image_without_out_is_refused(tiny_models, two_images):
    image = two_images / "a.png"
    res = detect(tiny_models, image, "--engine", "ray")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert (f"error: --engine ray: one image without --out runs in this process; give --out OUT "
            f"to run '{image}' on Ray") in res.stderr
    assert res.stdout == ""


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
    from vlpipe.batch import driver
    from vlpipe.cli import app

    write = driver.append_line
    written = []

    def fill_up(sink, line):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(sink, line)
        written.append(line)

    monkeypatch.setattr(driver, "append_line", fill_up)
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


# issue 23, item 4: one more round as a new user ----------------------------------------------

def cli(*args):
    """The command line in this process (no exception escapes typer's runner unnoticed)."""
    from vlpipe.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_error_line(res, message: str, code: int = 2) -> None:
    assert res.exit_code == code, res.output
    assert isinstance(res.exception, SystemExit)  # no exception of ours or a library's
    assert f"error: {message}" in res.stderr, res.stderr
    assert "Traceback" not in res.output


@pytest.mark.parametrize("device, gpus, message", [
    ("banana", 0, "bad params: unknown device 'banana' (use auto, cpu, cuda, cuda:N or mps)"),
    ("cuda", 0, "device 'cuda': this machine has no CUDA device (use auto or cpu)"),
    ("cuda:3", 2, "device 'cuda:3': this machine has 2 CUDA GPU(s), numbered from 0"),
])
def test_a_device_this_machine_lacks_is_refused_before_anything_loads(
        tiny_models, two_images, tmp_path, monkeypatch, device, gpus, message):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    one = cli("run", tiny_models / "detect.yaml", two_images / "a.png", "--device", device)
    assert_one_error_line(one, "invalid pipeline")
    assert message in one.stderr and "RuntimeError" not in one.stderr
    out = tmp_path / "out"
    many = cli("run", tiny_models / "detect.yaml", two_images, "--out", out, "--set",
               f"device={device}")
    assert message in many.stderr and not out.exists()
    # graph only validates: a Ray run may name a device only its workers have
    assert (cli("graph", tiny_models / "detect.yaml", "--set", f"device={device}").exit_code
            == (2 if device == "banana" else 0))


def test_trace_into_a_missing_folder_is_refused_before_the_run(tiny_models, two_images, tmp_path):
    trace = tmp_path / "no" / "such" / "trace.json"
    res = cli("run", tiny_models / "detect.yaml", two_images / "a.png", "--trace", trace, *FAST)
    assert_one_error_line(res, f"--trace '{trace}': no folder '{trace.parent}' to write it in")
    assert res.stdout == ""


def test_images_option_without_an_annotation_file_is_an_error(tiny_models, two_images):
    res = cli("run", tiny_models / "detect.yaml", two_images, "--images", two_images)
    assert_one_error_line(res, f"--images is the image root of an annotation-file input; "
                               f"'{two_images}' is not a .json")


def test_tiny_models_into_a_file_is_an_error(tmp_path):
    (tmp_path / "taken").write_text("a file")
    assert_one_error_line(cli("models", "tiny", tmp_path / "taken"),
                          f"cannot write the tiny models to '{tmp_path / 'taken'}': File exists")


@pytest.mark.parametrize("case", ["missing", "binary", "not json", "no label"])
def test_calibrate_names_the_labelled_file_and_line(tiny_models, two_images, tmp_path, case):
    labelled = tmp_path / "labelled.jsonl"
    if case == "binary":
        shutil.copy(two_images / "sub" / "b.jpg", labelled)
    elif case == "not json":
        labelled.write_text("\n{oops\n")
    elif case == "no label":
        labelled.write_text(json.dumps({"image": str(two_images / "a.png"), "question": "q"}))
    expected = {"missing": f"cannot read the labelled questions '{labelled}': No such file",
                "binary": f"cannot read the labelled questions '{labelled}': 'utf-8' codec",
                "not json": f"{labelled}:2: not a JSON line (",
                "no label": f"{labelled}:1: no label (each line is"}[case]
    res = cli("calibrate", labelled, "--pipeline", tiny_models / "ask.yaml",
              "--out", tmp_path / "cal.json")
    assert_one_error_line(res, expected)


@pytest.mark.parametrize("images, problem", [
    ("x", "'images' is not a list"), (["x"], "images[0] is not an object"),
    ([{"file_name": "a.png"}], "images[0] has no id"),
])
def test_damaged_annotation_files_are_named_in_run_and_eval(tiny_models, two_images, tmp_path,
                                                            images, problem):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": images, "annotations": [], "categories": []}))
    message = f"ground-truth file '{gt}' is not in COCO/LVIS format: {problem}"
    assert_one_error_line(cli("run", tiny_models / "detect.yaml", gt, "--images", two_images,
                              "--out", tmp_path / "out"), message)
    (tmp_path / "res.json").write_text("[]")
    assert_one_error_line(cli("eval", tmp_path / "res.json", "--gt", gt), message)


def test_interrupted_run_says_how_to_go_on_and_the_next_run_does(tiny_models, two_images,
                                                                 tmp_path, monkeypatch):
    from vlpipe.batch import driver

    write = driver.append_line

    def interrupt_after_one(sink, line):
        write(sink, line)
        raise KeyboardInterrupt  # Ctrl-C right after the first image was written

    monkeypatch.setattr(driver, "append_line", interrupt_after_one)
    out = tmp_path / "out"
    args = ["run", tiny_models / "detect.yaml", two_images, "--out", out, "--batch-size", "1",
            *FAST]
    stopped = cli(*args)
    assert stopped.exit_code == 130 and "Traceback" not in stopped.output
    assert f"interrupted: the finished images are kept in '{out}'; run the same command " \
           "again" in stopped.stderr
    assert len(read_predictions(out / PREDICTIONS)) == 1
    monkeypatch.setattr(driver, "append_line", write)
    resumed = cli(*args)
    assert resumed.exit_code == 0, resumed.output
    assert "done 1, skipped 1" in resumed.stderr
    assert len(read_predictions(out / PREDICTIONS)) == 2


def test_killed_run_resumes_and_concurrent_runs_on_other_outs_finish(tiny_models, tmp_path):
    src = tmp_path / "imgs"
    for k in range(4):
        write_image(src / f"{k}.png", k)
    killed = tmp_path / "killed"
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.Popen([sys.executable, "-m", "vlpipe", "run", tiny_models / "detect.yaml",
                             src, "--out", killed, "--batch-size", "1", *FAST],
                            env={**os.environ, "PYTHONPATH": path},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    predictions = killed / PREDICTIONS
    try:  # kill -9 once the first record is written (or when the run ends first)
        while proc.poll() is None and not (predictions.exists() and predictions.stat().st_size):
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    first = len(read_predictions(killed / PREDICTIONS))
    assert first >= 1
    # two runs at once: the killed one resumed (its lock died with it), and a fresh --out
    runs = [subprocess.Popen([sys.executable, "-m", "vlpipe", "run", tiny_models / "detect.yaml",
                              src, "--out", out, *FAST], env={**os.environ, "PYTHONPATH": path},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for out in (killed, tmp_path / "fresh")]
    outcomes = [r.communicate(timeout=600) + (r.returncode,) for r in runs]
    assert all(code == 0 for _, _, code in outcomes), outcomes
    assert f"skipped {first}" in outcomes[0][1] and "done 4, skipped 0" in outcomes[1][1]
    for out in (killed, tmp_path / "fresh"):
        records = read_predictions(out / PREDICTIONS)
        assert sorted(r["file"] for r in records) == [f"{k}.png" for k in range(4)]
        assert all(r["error"] is None for r in records)


def test_weights_that_cannot_load_stop_the_run_and_poison_nothing(tiny_models, two_images,
                                                                  tmp_path):
    """A wrong --sam path fails every image the same way: one error line, no image recorded as
    failed (a rerun would skip those), and the fixed command runs them all."""
    out = tmp_path / "out"
    args = ["run", tiny_models / "detect.yaml", two_images, "--out", out, *FAST]
    wrong = cli(*args, "--sam", tmp_path / "nowhere")
    assert_one_error_line(wrong, f"cannot load the SAM model: no folder '{tmp_path / 'nowhere'}'")
    assert "WeightsNotFound" not in wrong.stderr and "no image was recorded" in wrong.stderr
    assert read_predictions(out / PREDICTIONS) == []
    one = cli("run", tiny_models / "detect.yaml", two_images / "a.png", *FAST,
              "--mllm", tmp_path / "nowhere")
    assert_one_error_line(one, f"cannot load the MLLM model: no folder '{tmp_path / 'nowhere'}'")
    fixed = cli(*args)
    assert fixed.exit_code == 0 and "done 2, skipped 0" in fixed.stderr, fixed.output


def test_a_dtype_that_is_no_float_type_is_bad_params(tiny_models):
    res = cli("graph", tiny_models / "detect.yaml", "--set", "dtype=int3")
    assert_one_error_line(res, "invalid pipeline")
    assert "bad params: unknown dtype 'int3' (use auto, float32, float16, bfloat16)" in res.stderr
    assert cli("graph", tiny_models / "detect.yaml", "--set", "dtype=bfloat16").exit_code == 0
