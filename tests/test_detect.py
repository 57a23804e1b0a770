"""`vlpipe run detect` end to end on tiny models, and the CLI around it."""

import json

import numpy as np
from typer.testing import CliRunner

from vlpipe.cli import app
from vlpipe.io import IMAGE_SUFFIXES
from vlpipe.results import decode_mask

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def check_record(record, path, hw):
    h, w = hw
    assert record["file"] == str(path) and record["error"] is None
    assert (record["width"], record["height"]) == (w, h)
    assert record["detections"], "tiny models always name some objects"
    for det in record["detections"]:
        x, y, bw, bh = det["bbox"]
        assert 0 <= x and 0 <= y and bw > 0 and bh > 0 and x + bw <= w and y + bh <= h
        assert det["segmentation"]["size"] == [h, w]
        mask = decode_mask(det["segmentation"])
        assert mask.shape == (h, w) and mask.any()
        ys, xs = np.nonzero(mask)  # the box is the mask's extent, in pixel edges
        assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == [x, y, x + bw, y + bh]
        assert isinstance(det["name"], str) and det["name"]
        assert 0 <= det["score"] <= 1


def test_detect_on_every_shared_image(tiny_models, shared_images):
    from PIL import Image, ImageOps

    images = sorted(p for p in shared_images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    assert len(images) >= 7
    for path in images:
        code, out, err = invoke("run", tiny_models / "detect.yaml", path)
        assert code == 0, err
        with Image.open(path) as im:
            w, h = ImageOps.exif_transpose(im).size
        check_record(json.loads(out), path, (h, w))


def test_detect_with_tiles_and_ten_questions_and_pictures(tiny_models, shared_images, tmp_path,
                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)  # pictures go to ./vlpipe-out
    image = tmp_path / "dog.jpg"
    image.write_bytes((shared_images / "dog.jpg").read_bytes())
    code, out, err = invoke("run", tiny_models / "detect.yaml", image, "--tiles", "2x2",
                            "--questions", "10", "--save-vis", "--save-attention",
                            "--trace", tmp_path / "trace.json")
    assert code == 0, err
    check_record(json.loads(out), image, (534, 800))
    assert len(list((tmp_path / "vlpipe-out" / "vis").glob("dog-*.jpg"))) == 1
    overlays = list((tmp_path / "vlpipe-out" / "attention").glob("dog-*.jpg"))
    assert overlays
    trace = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    assert {e["name"] for e in trace} == {"views", "objects", "maps", "sam", "merge"}


def test_missing_weights_error_names_model_cache_and_command(tiny_models, shared_images):
    code, out, err = invoke("run", "detect", shared_images / "dog.jpg", "--mllm",
                            "nobody/no-such-mllm", "--tiles", "1x1", "--questions", "1")
    assert code == 2
    assert "nobody/no-such-mllm" in err and "hf download nobody/no-such-mllm" in err
    assert "Hugging Face cache" in err
    assert "Traceback" not in err


def test_bad_image_and_bad_params_are_clear_errors(tiny_models, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code, _, err = invoke("run", tiny_models / "detect.yaml", broken)
    assert code == 2 and "broken.jpg" in err
    code, _, err = invoke("run", "detect", broken, "--set", "nope=1")
    assert code == 2 and "has no param 'nope'" in err
    code, _, err = invoke("run", "no-such-recipe", broken)
    assert code == 2 and "no built-in recipe" in err
    # a value the node itself rejects: named with its node, no traceback
    code, _, err = invoke("run", "detect", broken, "--set", "sam_backend=hf3")
    assert code == 2 and "node 'sam' (sam): bad params: unknown SAM backend 'hf3'" in err
    assert "Traceback" not in err


def test_graph_and_help():
    code, out, _ = invoke("graph", "detect")
    assert code == 0 and out.startswith("flowchart TD")
    assert "maps -->|maps| sam" in out and "sam -->|detections| merge" in out
    code, out, _ = invoke("--help")
    assert code == 0 and "run" in out and "models" in out


def test_tiny_command_warns_that_results_are_meaningless(tmp_path, monkeypatch):
    import vlpipe.tiny

    monkeypatch.setattr(vlpipe.tiny, "build_all", lambda out: [out / "detect.yaml"])
    code, out, err = invoke("models", "tiny", tmp_path)
    assert code == 0 and "meaningless" in err and "detect.yaml" in out
