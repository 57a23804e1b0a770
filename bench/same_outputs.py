"""SHA-256 of what the built-in recipes print and write on the tiny random-weight models: run it
before and after a refactoring, the two JSON files must be equal (issue 26: same bytes).

    PYTHONPATH=$PWD python bench/same_outputs.py --out hashes.json [--no-ray]

Every run goes through the CLI (``vlpipe run``), in this process, with one torch thread:
``--json`` of one image for detect, detect-fused, ask (the MLLM's policy and ``always``), ground
(each grounding backend) and ocr; detect and ask once per MLLM family's tiny model and detect
once per SAM backend (the official one is segment-anything's variant ``tiny``, registered by
building the tiny models); a folder of two images written to ``predictions.jsonl`` by the local
engine and by the Ray engine (2 workers; its lines sorted, as they come in completion order). The tiny
models are built under a temporary folder (``vlpipe.tiny.build_all``), as the tests build them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "tests" / "data" / "images"
FAMILIES = ("llava", "llava_next", "qwen2_vl", "qwen3_vl")  # the tiny MLLMs of main at 69cebb3
SAM_BACKENDS = {"hf2": "sam_hf2", "official": "sam_official/sam_tiny.safetensors",
                "sam3": "sam3_tracker"}
GROUNDING_BACKENDS = ("grounding_dino", "owlv2", "sam3")
SMALL = ["--tiles", "1x1", "--questions", "1", "--rounds", "1"]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cli(args: list[str]) -> bytes:
    """``vlpipe run ARGS --threads 1``'s standard output; an error when it fails."""
    from typer.testing import CliRunner

    from vlpipe.cli import app

    res = CliRunner().invoke(app, ["run", *args, "--threads", "1"])
    if res.exit_code != 0:
        raise RuntimeError(f"vlpipe run {' '.join(args)} failed ({res.exit_code}): "
                           f"{res.stderr[-2000:]}{res.exception!r}")
    return res.stdout_bytes


def _one_image_runs(models: Path) -> dict[str, list[str]]:
    """Name -> ``vlpipe run`` arguments printing one image's ``--json`` result."""
    cat_dog, dog, en = (str(IMAGES / n) for n in ("cat_dog.jpeg", "dog.jpg", "en.jpg"))
    spec = {r: str(models / f"{r}.yaml") for r in ("detect", "detect-fused", "ask", "ground",
                                                     "ocr")}
    runs = {
        "detect": [spec["detect"], dog],
        "detect-fused": [spec["detect-fused"], cat_dog],
        "ask": [spec["ask"], cat_dog, "What animal is on the left?"],
        "ask-always": [spec["ask"], en, "What is written on the sign?", "--set", "policy=always"],
        "ocr": [spec["ocr"], en],
    }
    for backend in GROUNDING_BACKENDS:
        runs[f"ground-{backend}"] = [spec["ground"], cat_dog, "a dog. a cat.",
                                     "--set", f"grounding_backend={backend}",
                                     "--set", f"grounding={models / backend}",
                                     "--set", "box_threshold=0.0"]
    for family in FAMILIES:
        runs[f"detect-{family}"] = [spec["detect"], dog, "--mllm", str(models / family), *SMALL]
        runs[f"ask-{family}"] = [spec["ask"], cat_dog, "How many animals?",
                                 "--mllm", str(models / family), "--set", "policy=always"]
    for backend, folder in SAM_BACKENDS.items():
        runs[f"detect-sam-{backend}"] = [spec["detect"], dog, "--sam", str(models / folder),
                                         "--set", f"sam_backend={backend}",
                                         "--set", "sam_variant=tiny", *SMALL]
    return {name: [*args, "--json"] for name, args in runs.items()}


def _folder_run(models: Path, folder: Path, out: Path, engine: list[str]) -> str:
    """The hash of ``predictions.jsonl`` (its lines sorted) of the tiny detect recipe over
    ``folder`` on ``engine``."""
    _cli([str(models / "detect.yaml"), str(folder), "--out", str(out), "--batch-size", "2",
          *SMALL, *engine])
    lines = sorted((out / "predictions.jsonl").read_bytes().splitlines())
    return _sha(b"\n".join(lines))


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the hashes here as JSON")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray engine's run")
    args = parser.parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    from vlpipe.tiny import build_all

    hashes: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="same_outputs_") as tmp:
        tmp = Path(tmp)
        models = tmp / "models"
        build_all(models)
        for name, run_args in _one_image_runs(models).items():
            hashes[name] = _sha(_cli(run_args))
            print(f"{name:24s} {hashes[name]}", flush=True)
        folder = tmp / "images"
        folder.mkdir()
        for name in ("cat_dog.jpeg", "truck.jpg"):
            shutil.copy(IMAGES / name, folder / name)
        engines = {"batch-local": []}
        if not args.no_ray:
            engines["batch-ray"] = ["--engine", "ray", "--workers", "2"]
        for name, engine in engines.items():
            hashes[name] = _folder_run(models, folder, tmp / name, engine)
            print(f"{name:24s} {hashes[name]}", flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")
    return hashes


if __name__ == "__main__":
    sys.path[0] = str(ROOT)  # not bench/: at 69cebb3 its ray.py shadowed the ray package
    main()
