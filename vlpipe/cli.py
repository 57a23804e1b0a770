"""The ``vlpipe`` command line (typer). Heavy imports happen inside the commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="Training-free open-ended perception pipelines (VL-SAM, P2G).",
                  no_args_is_help=True, pretty_exceptions_enable=False)
models_app = typer.Typer(help="Model utilities.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


def _params(sets: list[str], named: dict) -> dict:
    """--set key=value (values parsed as YAML scalars) plus the named shortcuts that were given."""
    import yaml

    params = {k: v for k, v in named.items() if v is not None}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            _fail(f"--set expects key=value, got {item!r}")
        params[key.strip()] = yaml.safe_load(value)
    return params


def _load_pipeline(pipeline: str, params: dict):
    from .pipeline import GraphError, Pipeline

    try:
        return Pipeline.load(pipeline, **params)
    except GraphError as exc:
        _fail(str(exc))


@app.command()
def run(
    pipeline: Annotated[str, typer.Argument(help="A recipe name (detect, ask, ocr, ground) or a pipeline file.")],
    input: Annotated[str, typer.Argument(help="An image, a folder of images, or a COCO/LVIS annotation .json.")],
    args: Annotated[Optional[list[str]], typer.Argument(help="Values of the pipeline's other inputs, in order (e.g. the question).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder: predictions.jsonl, results.json, vis/.")] = None,
    images: Annotated[Optional[Path], typer.Option(help="Image root for an annotation-file input.")] = None,
    sets: Annotated[list[str], typer.Option("--set", "-s", help="Pipeline param, key=value (repeatable).")] = [],
    questions: Annotated[Optional[int], typer.Option(help="Number of 'list the objects' questions.")] = None,
    tiles: Annotated[Optional[str], typer.Option(help="Tile grid besides the full image, e.g. 2x2; 1x1 = none.")] = None,
    rounds: Annotated[Optional[int], typer.Option(help="SAM refinement rounds.")] = None,
    mllm: Annotated[Optional[str], typer.Option(help="MLLM: Hugging Face id or local folder.")] = None,
    sam: Annotated[Optional[str], typer.Option(help="SAM: Hugging Face id, folder or checkpoint.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the structured result.")] = False,
    save_vis: Annotated[bool, typer.Option(help="Write annotated images.")] = False,
    save_attention: Annotated[bool, typer.Option(help="Write attention heat-map overlays.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images per batch through the graph.")] = 4,
    max_failures: Annotated[Optional[int], typer.Option(help="Stop after this many failed images.")] = None,
    clip: Annotated[Optional[str], typer.Option(help="CLIP model for mapping names to dataset categories.")] = None,
    trace: Annotated[Optional[Path], typer.Option(help="Write a Chrome trace of node timings.")] = None,
):
    """Run PIPELINE on INPUT: one image prints its result; a folder or annotation file (or --out)
    writes OUT/predictions.jsonl and, with image ids, OUT/results.json."""
    params = _params(sets, {"questions": questions, "tiles": tiles, "rounds": rounds,
                            "mllm": mllm, "sam": sam, "device": device})
    pipe = _load_pipeline(pipeline, params)
    source = Path(input)
    if out is None and source.is_file() and source.suffix.lower() != ".json":
        _run_one(pipe, source, args or [], json_out, save_vis, save_attention)
    else:
        _run_many(pipe, source, images, out or Path("vlpipe-out"), batch_size, max_failures,
                  save_vis, save_attention, clip)
    if trace is not None:
        pipe.trace.save_chrome(trace)


def _run_one(pipe, path: Path, args: list[str], json_out: bool, save_vis: bool,
             save_attention: bool) -> None:
    from .io import ImageLoadError, load_image
    from .results import annotate, image_record, jsonable
    from .runner import save_attention as write_attention
    from .runner import save_image

    image_inputs = [k for k, t in pipe.graph.inputs.items() if t == "image"]
    others = [k for k in pipe.graph.inputs if k not in image_inputs]
    if len(image_inputs) != 1 or len(args) != len(others):
        _fail(f"pipeline {pipe.name!r} takes an image and {len(others)} more input(s) "
              f"({', '.join(others) or 'none'}); got {len(args)}")
    try:
        image = load_image(path)
    except ImageLoadError as exc:
        _fail(str(exc))
    result = pipe.run(**{image_inputs[0]: image}, **dict(zip(others, args)))
    if result.error is not None:
        _fail(f"{path}: {result.error}")
    outputs = result.outputs
    dets = outputs.get("detections")
    if dets is not None and save_vis:
        save_image(path.with_name(path.stem + "_vis.jpg"), annotate(image, dets))
    if outputs.get("maps") and save_attention:
        write_attention(path.parent / f"{path.stem}_attention", path.name, image, outputs["maps"])
    if "answer" in outputs and not json_out:
        typer.echo(outputs["answer"])
    elif "detections" in outputs and set(outputs) <= {"detections", "maps"}:
        typer.echo(json.dumps(image_record(str(path), None, image.shape[:2], dets),
                              ensure_ascii=False))
    else:
        typer.echo(json.dumps({k: jsonable(v) for k, v in outputs.items()}, ensure_ascii=False,
                              indent=None if not json_out else 2))


def _run_many(pipe, source: Path, images: Path | None, out: Path, batch_size: int,
              max_failures: int | None, save_vis: bool, save_attention: bool,
              clip: str | None) -> None:
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeRemainingColumn)

    from .runner import PREDICTIONS, BatchRunner, MaxFailures, list_inputs, write_results

    if "detections" not in pipe.graph.outputs:
        _fail(f"pipeline {pipe.name!r} has no 'detections' output: batch runs need one")
    try:
        entries, gt = list_inputs(source, images)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    runner = BatchRunner(pipe, out, batch_size=batch_size, max_failures=max_failures,
                         save_vis=save_vis, save_attention=save_attention)
    todo, _ = runner.pending(entries)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("[cyan]{task.fields[rate]}"),
               TimeRemainingColumn()]
    with Progress(*columns, transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("detect", total=len(todo), rate="")

        def advance(n: int) -> None:
            bar.advance(task, n)
            speed = bar.tasks[task].speed
            bar.update(task, rate=f"{speed:.2f} img/s" if speed else "")

        try:
            summary = runner.run(entries, progress=advance)
        except MaxFailures as exc:
            _fail(str(exc))
    typer.echo(f"done {summary.done}, skipped {summary.skipped} (already in {out / PREDICTIONS}), "
               f"failed {summary.failed}, {summary.seconds:.1f} s "
               f"({summary.images_per_second:.2f} img/s)", err=True)
    for line in summary.errors[:20]:
        typer.echo(f"  failed: {line}", err=True)
    if gt is not None:
        path = write_results(out, gt, clip)
        typer.echo(f"wrote {path}", err=True)


@app.command()
def graph(pipeline: Annotated[str, typer.Argument(help="A recipe name or a pipeline file.")],
          sets: Annotated[list[str], typer.Option("--set", "-s", help="key=value")] = []):
    """Print the pipeline's DAG as a mermaid flowchart (validated, no model loaded)."""
    typer.echo(_load_pipeline(pipeline, _params(sets, {})).to_mermaid())


@app.command()
def recipes():
    """List the built-in recipes."""
    from .pipeline import PipelineSpec, recipe_names, resolve_pipeline

    for name in recipe_names():
        spec = PipelineSpec.load(resolve_pipeline(name))
        typer.echo(f"{name}: {' '.join(spec.description.split())}")


@models_app.command("tiny")
def models_tiny(out: Annotated[Path, typer.Argument(help="Folder to write the models and pipeline files to.")]):
    """Write tiny random-weight models of every kind plus DIR/<recipe>.yaml pointing at them.

    Their outputs are meaningless: they check an install offline, and the tests use them."""
    from .tiny import build_all

    written = build_all(out)
    for path in written:
        typer.echo(str(path))
    typer.secho("These models have random weights: results from them are meaningless.",
                fg="yellow", err=True)


@app.command("eval")
def eval_cmd(
    out: Annotated[Path, typer.Argument(help="A run's output folder (with results.json) or a results .json file.")],
    gt: Annotated[Path, typer.Option(help="COCO/LVIS annotation file.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
):
    """Score results against ground truth (LVIS-style AP for LVIS files, COCO AP/AR otherwise)."""
    from .eval import evaluate
    from .runner import RESULTS

    path = out / RESULTS if out.is_dir() else out
    if not path.is_file():
        _fail(f"no results file '{path}' (run `vlpipe run detect ANNOTATIONS.json --out DIR` first)")
    try:
        metrics = evaluate(gt, json.loads(path.read_text()))
    except ValueError as exc:
        _fail(str(exc))
    if json_out:
        typer.echo(json.dumps(metrics, indent=2))
        return
    for iou_type, values in metrics.items():
        typer.echo(f"{iou_type}: " + "  ".join(f"{k} {v:.3f}" for k, v in values.items()))
