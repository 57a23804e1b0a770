"""The ``vlpipe`` command line (typer). Heavy imports happen inside the commands."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="Training-free open-ended perception pipelines (VL-SAM, P2G).",
                  no_args_is_help=True, pretty_exceptions_enable=False)
models_app = typer.Typer(help="Model utilities.", no_args_is_help=True)
app.add_typer(models_app, name="models")

DEFAULT_OUT = Path("vlpipe-out")
TOOLS = ("grounding", "ocr")  # the expert tools a P2G need-tool decision calls


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


def _params(sets: list[str], named: dict) -> dict:
    """--set key=value (values parsed as YAML scalars) plus the named shortcuts that were given."""
    import yaml

    params = {k: v for k, v in named.items() if v is not None}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            _fail(f"--set expects key=value, got {item!r}")
        try:
            params[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            _fail(f"--set {item!r}: the value is not valid YAML ({' '.join(str(exc).split())})")
    return params


def _load_pipeline(pipeline: str, params: dict, here: bool = True):
    """The pipeline, checked (``here``: that this machine has its nodes' devices); an
    ``error:`` line when it is not valid."""
    from .batch import LocalEngine
    from .pipeline import GraphError, Pipeline

    try:
        pipe = Pipeline.load(pipeline, **params)
        if here:
            LocalEngine().check(pipe)
        return pipe
    except GraphError as exc:
        _fail(str(exc))


@app.command()
def run(
    pipeline: Annotated[str, typer.Argument(help="A recipe name (detect, ask, ocr, ground) or a pipeline file.")],
    input: Annotated[str, typer.Argument(help="An image, a folder of images, or a COCO/LVIS annotation .json.")],
    args: Annotated[Optional[list[str]], typer.Argument(help="Values of the pipeline's other inputs, in order (e.g. the question).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder: predictions.jsonl, results.json, vis/ (default ./vlpipe-out).")] = None,
    images: Annotated[Optional[Path], typer.Option(help="Image root for an annotation-file input.")] = None,
    sets: Annotated[list[str], typer.Option("--set", "-s", help="Pipeline param, key=value (repeatable).")] = [],
    questions: Annotated[Optional[int], typer.Option(help="Number of 'list the objects' questions.")] = None,
    tiles: Annotated[Optional[str], typer.Option(help="Tile grid besides the full image, e.g. 2x2; 1x1 = none.")] = None,
    rounds: Annotated[Optional[int], typer.Option(help="SAM refinement rounds.")] = None,
    branches: Annotated[Optional[str], typer.Option(help="detect-branches: which localization branches run and are fused, comma-separated (attention, points, boxes, grounding).")] = None,
    mllm: Annotated[Optional[str], typer.Option(help="MLLM: Hugging Face id or local folder.")] = None,
    sam: Annotated[Optional[str], typer.Option(help="SAM: Hugging Face id, folder or checkpoint.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = None,
    trust_remote_code: Annotated[bool, typer.Option(help="Allow model code from the hub (off by default).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the structured result.")] = False,
    save_vis: Annotated[bool, typer.Option(help="Write annotated images.")] = False,
    save_attention: Annotated[bool, typer.Option(help="Write attention heat-map overlays.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images per batch through the graph.")] = 4,
    max_failures: Annotated[Optional[int], typer.Option(help="Stop once this many images have failed.")] = None,
    retry_failed: Annotated[bool, typer.Option(help="Run again the images whose record in OUT is a failure.")] = False,
    clip: Annotated[Optional[str], typer.Option(help="CLIP model for mapping names to dataset categories.")] = None,
    trace: Annotated[Optional[Path], typer.Option(help="Write a Chrome trace of node timings.")] = None,
    top_k: Annotated[int, typer.Option(help="Dataset categories kept per detection name.")] = 1,
    engine: Annotated[str, typer.Option(help="local, or ray: a pool of Ray actors (pip install 'vlpipe[ray]').")] = "local",
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address (auto, host:6379, ray://host:10001); default: start a local Ray.")] = None,
    workers: Annotated[int, typer.Option(help="Ray engine: pipeline actors.")] = 2,
    num_gpus_per_worker: Annotated[float, typer.Option(help="Ray engine: GPUs per actor (1 = one GPU each).")] = 0,
    threads: Annotated[int, typer.Option(help="torch CPU threads per process (local run or each Ray actor); the same value gives the same bytes.")] = 1,
):
    """Run PIPELINE on INPUT: one image prints its result (--save-vis / --save-attention write
    under --out, default ./vlpipe-out); a folder or annotation file (or --out) writes
    OUT/predictions.jsonl and, with image ids, OUT/results.json."""
    params = _params(sets, {"questions": questions, "tiles": tiles, "rounds": rounds,
                            "branches": branches, "mllm": mllm, "sam": sam, "device": device,
                            "trust_remote_code": trust_remote_code or None})
    _check_options(engine, trace, num_gpus_per_worker,
                   {"--batch-size": batch_size, "--max-failures": max_failures, "--top-k": top_k,
                    "--workers": workers, "--threads": threads})
    source = Path(input)
    if images is not None and source.suffix.lower() != ".json":
        _fail(f"--images is the image root of an annotation-file input; '{source}' is not a .json")
    if out is None and source.is_file() and source.suffix.lower() != ".json":
        if engine == "ray":
            _fail(f"--engine ray: one image without --out runs in this process; give --out OUT "
                  f"to run '{source}' on Ray")
        from .batch import torch_threads

        pipe = _load_pipeline(pipeline, params)
        with torch_threads(threads):
            _run_one(pipe, source, args or [], json_out, save_vis, save_attention)
        node_trace = pipe.trace
    else:
        options = _run_options(engine, address, workers, num_gpus_per_worker,
                               batch_size=batch_size, max_failures=max_failures,
                               save_vis=save_vis, save_attention=save_attention,
                               retry_failed=retry_failed, threads=threads)
        node_trace = _run_many(pipeline, params, source, images, out or DEFAULT_OUT, clip, top_k,
                               options)
    if trace is not None:
        try:
            node_trace.save_chrome(trace)
        except OSError as exc:
            _fail(f"cannot write --trace '{trace}': {exc.strerror}")


def _check_options(engine: str, trace: Path | None, num_gpus: float,
                   at_least_one: dict[str, int | None]) -> None:
    """The run options that can be checked before anything loads."""
    if engine not in ("local", "ray"):
        _fail(f"--engine is local or ray, not {engine!r}")
    if engine == "ray" and trace is not None:
        _fail("--trace records the local engine's nodes only; the Ray actors keep their own")
    if trace is not None and not trace.parent.is_dir():
        _fail(f"--trace '{trace}': no folder '{trace.parent}' to write it in")
    if num_gpus < 0:
        _fail(f"--num-gpus-per-worker cannot be negative, got {num_gpus}")
    for option, value in at_least_one.items():
        if value is not None and value < 1:
            _fail(f"{option} must be at least 1, got {value}")


@contextmanager
def _output_folder(out: Path):
    """Hold ``out``'s lock for the block (one run per output folder); an ``error:`` line when
    it is not a writable folder or another run holds it."""
    from .batch import OutputError, lock_output

    try:
        with lock_output(out):
            yield out
    except OutputError as exc:
        _fail(str(exc))


def _run_one(pipe, path: Path, args: list[str], json_out: bool, save_vis: bool,
             save_attention: bool) -> None:
    from .io import ImageLoadError, load_image
    from .pipeline import SetupError

    image_inputs = [k for k, t in pipe.graph.inputs.items() if t == "image"]
    others = [k for k in pipe.graph.inputs if k not in image_inputs]
    if len(image_inputs) != 1 or len(args) != len(others):
        _fail(f"pipeline {pipe.name!r} takes an image and {len(others)} more input(s) "
              f"({', '.join(others) or 'none'}); got {len(args)}")
    try:
        image = load_image(path)
    except ImageLoadError as exc:
        _fail(str(exc))
    outputs = pipe.graph.outputs
    pictures = (save_vis and "detections" in outputs) or (save_attention and "maps" in outputs)
    with _output_folder(DEFAULT_OUT) if pictures else nullcontext():
        try:
            result = pipe.run(**{image_inputs[0]: image}, **dict(zip(others, args)))
        except SetupError as exc:
            _fail(str(exc))
        if result.error is not None:
            _fail(f"{path}: {result.error}")
        _print_result(pipe, path, image, result, json_out)
        _save_pictures(DEFAULT_OUT, path, image, result.outputs, save_vis, save_attention)


def _print_result(pipe, path: Path, image, result, json_out: bool) -> None:
    """One image's result: --json, the answer, the text lines, the detect JSON line, or one
    line per detection."""
    from .results import detections_to_json, image_record, jsonable

    outputs = result.outputs
    if json_out:
        payload = {k: jsonable(v) for k, v in outputs.items()}
        payload["skipped"] = result.skipped
        payload["tools"] = _tools_ran(pipe, result)
        typer.echo(json.dumps(payload, ensure_ascii=False, indent=2))
    elif "answer" in outputs:
        typer.echo(outputs["answer"])
    elif "lines" in outputs:
        for line in outputs["lines"]:
            typer.echo(line.text)
    elif "detections" in outputs and "maps" in outputs:  # detect: the documented JSON line
        typer.echo(json.dumps(image_record(str(path), None, image.shape[:2],
                                           outputs["detections"]), ensure_ascii=False))
    else:
        for det in detections_to_json(outputs["detections"]):
            box = [round(v, 1) for v in det["bbox"]]
            typer.echo(f"{det['name']}\t{det['score']:.3f}\tbbox xywh {box}")


def _tools_ran(pipe, result) -> list[str]:
    """The expert tools (node types in TOOLS) that ran on the item, in TOOLS order."""
    from .pipeline import registry

    ran = [node for name, node in pipe.graph.nodes.items() if name not in result.skipped]
    return [tool for tool in TOOLS if any(isinstance(n, registry.get(tool)) for n in ran)]


def _save_pictures(out: Path, path: Path, image, outputs: dict, save_vis: bool,
                   save_attention: bool) -> None:
    from .batch import save_pictures
    from .io import printable_name

    try:
        written = save_pictures(out, printable_name(path.name), image, outputs, save_vis,
                                save_attention)
    except OSError as exc:
        _fail(f"cannot write the pictures under '{out}': {exc}")
    for file in written:
        typer.echo(f"wrote {file}", err=True)


def _run_options(engine: str, address: str | None, workers: int, num_gpus_per_worker: float,
                 **options):
    """The batch run's options with the chosen engine."""
    from .batch import LocalEngine, RayEngine, RunOptions

    if engine == "ray":
        return RunOptions(**options, engine=RayEngine(address=address, workers=workers,
                                                      num_gpus_per_worker=num_gpus_per_worker))
    return RunOptions(**options, engine=LocalEngine())


def _run_many(pipeline: str, params: dict, source: Path, images: Path | None, out: Path,
              clip: str | None, top_k: int, options):
    """A folder or annotation file through :func:`vlpipe.batch.run`; returns the node trace
    (None on Ray). The inputs are checked before the pipeline is built, the pipeline before
    anything is written."""
    from .batch import (PREDICTIONS, OutputError, PredictionsError, RayNotInstalled,
                        RayRunError, collect_inputs, write_results)
    from .pipeline import GraphError, SetupError

    try:
        inputs = collect_inputs(source, images, out)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    _report_left_out(inputs)
    try:
        summary, stopped = _with_progress(pipeline, params, inputs.entries, out, options)
    except (GraphError, RayNotInstalled, RayRunError, OutputError, PredictionsError) as exc:
        _fail(str(exc))
    except SetupError as exc:
        _fail(f"{exc}; no image was recorded as failed for it: fix this and run again")
    except OSError as exc:
        _fail(f"writing under '{out}' failed: {exc}; the finished images are kept in "
              f"{out / PREDICTIONS}: fix this and run again to resume")
    _report_summary(summary, out, options)
    if stopped is not None:
        _fail(str(stopped))
    if summary.failed and not summary.done:
        _fail(f"all {summary.failed} image(s) of this run failed", code=1)
    if inputs.gt is not None:
        with _output_folder(out):
            typer.echo(f"wrote {write_results(out, inputs.gt, clip, top_k)}", err=True)
    return summary.trace


def _report_left_out(inputs) -> None:
    """Say what a folder scan did not take as input."""
    if inputs.not_images:
        names = ", ".join(f"'{p.name}'" for p in inputs.not_images[:5])
        more = " ..." if len(inputs.not_images) > 5 else ""
        typer.echo(f"skipped {len(inputs.not_images)} file(s) that are not images: "
                   f"{names}{more}", err=True)
    for folder in inputs.output_folders:
        typer.echo(f"skipped '{folder}': a vlpipe output folder", err=True)


def _with_progress(pipeline: str, params: dict, entries: list, out: Path, options):
    """:func:`vlpipe.batch.run` under a progress bar (on a terminal): the summary, and the
    MaxFailures that stopped it (or None)."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeRemainingColumn)

    from .batch import MaxFailures, run

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("[cyan]{task.fields[rate]}"), TimeRemainingColumn()]
    with Progress(*columns, transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("detect", total=None, rate="")

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)
            speed = bar.tasks[task].speed
            bar.update(task, rate=f"{speed:.2f} img/s" if speed else "")

        try:
            return run(pipeline, params, entries, out, options, advance), None
        except MaxFailures as exc:
            return exc.summary, exc
        except KeyboardInterrupt:
            bar.stop()
            typer.secho(f"interrupted: the finished images are kept in '{out}'; run the same "
                        "command again to go on from there", fg="yellow", err=True)
            raise typer.Exit(130) from None


def _report_summary(summary, out: Path, options) -> None:
    from .batch import PREDICTIONS, RayEngine
    from .io import NOT_FOUND

    ray = options.engine
    engine = f" on Ray, {ray.workers} worker(s)" if isinstance(ray, RayEngine) else ""
    typer.echo(f"done {summary.done}, skipped {summary.skipped} (already in {out / PREDICTIONS}), "
               f"failed {summary.failed}, {summary.seconds:.1f} s "
               f"({summary.images_per_second:.2f} img/s){engine}", err=True)
    for line in summary.errors[:20]:
        typer.echo(f"  failed: {line}", err=True)
    if len(summary.errors) > 20:
        typer.echo(f"  ... and {len(summary.errors) - 20} more (see {out / PREDICTIONS})", err=True)
    missing = sum(e.endswith(NOT_FOUND) for e in summary.errors)
    if missing:
        typer.echo(f"{missing} image file(s) not found: with the right --images they are run "
                   "again on the next run", err=True)


@app.command()
def graph(pipeline: Annotated[str, typer.Argument(help="A recipe name or a pipeline file.")],
          sets: Annotated[list[str], typer.Option("--set", "-s", help="key=value")] = []):
    """Print the pipeline's DAG as a mermaid flowchart (validated, no model loaded)."""
    typer.echo(_load_pipeline(pipeline, _params(sets, {}), here=False).to_mermaid())


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

    try:
        written = build_all(out)
    except OSError as exc:
        _fail(f"cannot write the tiny models to '{out}': {exc.strerror or exc}")
    for path in written:
        typer.echo(str(path))
    typer.secho("These models have random weights: results from them are meaningless.",
                fg="yellow", err=True)


@app.command()
def calibrate(
    labelled: Annotated[Path, typer.Argument(help='JSONL: {"image": path, "question": str, "label": none|objects|text|both} per line.')],
    out: Annotated[Path, typer.Option(help="Where to write the calibrator JSON.")] = Path("calibrator.json"),
    pipeline: Annotated[str, typer.Option(help="Pipeline whose need_tool node gives the features.")] = "ask",
    sets: Annotated[list[str], typer.Option("--set", "-s", help="key=value")] = [],
):
    """Fit the need-tool calibrator (logistic model on the MLLM's option probabilities, OCR text
    area and question cues) on labelled questions; use it with --set policy=calibrated
    --set calibrator=FILE."""
    import numpy as np

    from .agents.mllm.need_tool import Calibrator, NeedToolNode
    from .io import ImageLoadError, load_image
    from .pipeline import SetupError

    pipe = _load_pipeline(pipeline, _params(sets, {}))
    nodes = [n for n in pipe.graph.nodes.values() if isinstance(n, NeedToolNode)]
    if not nodes:
        _fail(f"pipeline {pipe.name!r} has no need_tool node")
    node = nodes[0]
    try:
        lines = labelled.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"cannot read the labelled questions '{labelled}': "
              f"{getattr(exc, 'strerror', None) or exc}")
    X, labels = [], []
    for k, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            ex = json.loads(line)
            missing = [key for key in ("image", "question", "label")
                       if not isinstance(ex, dict) or key not in ex]
            if missing:
                _fail(f"{labelled}:{k}: no {', '.join(missing)} (each line is "
                      '{"image": path, "question": str, "label": none|objects|text|both})')
            image = load_image(labelled.parent / ex["image"])
            X.append(node.features(image, ex["question"]))
            labels.append(ex["label"])
        except json.JSONDecodeError as exc:
            _fail(f"{labelled}:{k}: not a JSON line ({exc})")
        except ImageLoadError as exc:
            _fail(f"{labelled}:{k}: {exc}")
        except SetupError as exc:
            _fail(str(exc))
    try:
        calibrator = Calibrator.fit(np.stack(X), labels)
    except ValueError as exc:
        _fail(f"{labelled}: {exc}")
    try:
        calibrator.save(out)
    except OSError as exc:
        _fail(f"cannot write the calibrator to '{out}': {exc.strerror or exc}")
    agree = np.mean([calibrator.decide(x) == y for x, y in zip(X, labels)])
    typer.echo(f"wrote {out}: {len(labels)} examples, training agreement {agree:.2f}")


@app.command("eval")
def eval_cmd(
    out: Annotated[Path, typer.Argument(help="A run's output folder (with results.json) or a results .json file.")],
    gt: Annotated[Path, typer.Option(help="COCO/LVIS annotation file.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    fixed_ap: Annotated[bool, typer.Option(
        "--fixed-ap", help="LVIS fixed AP: no per-image cap, the top 10,000 detections per "
                           "category over the dataset (as VL-SAM and GenerateU report).")] = False,
):
    """Score results against ground truth (LVIS-style AP for LVIS files, COCO AP/AR otherwise)."""
    from .batch import RESULTS
    from .eval import ResultsError, evaluate

    path = out / RESULTS if out.is_dir() else out
    if not path.is_file():
        _fail(f"no results file '{path}' (run `vlpipe run detect ANNOTATIONS.json --out DIR` first)")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        _fail(f"cannot read results file '{path}': {exc}")
    if not isinstance(results, list):
        _fail(f"'{path}' is not a COCO results file (a JSON list of detections)")
    try:
        metrics = evaluate(gt, results, fixed_ap=fixed_ap)
    except ResultsError as exc:
        _fail(f"results file '{path}': {exc}")
    except ValueError as exc:
        _fail(str(exc))
    _eval_notes(out, results)
    if json_out:
        typer.echo(json.dumps(metrics, indent=2))
        return
    for iou_type, values in metrics.items():
        typer.echo(f"{iou_type}: " + "  ".join(f"{k} {v:.3f}" for k, v in values.items()))


def _eval_notes(out: Path, results: list) -> None:
    """Warn (stderr) when the scores cannot be what the user meant: no detections at all, or
    images of the run that failed (they count as images without detections)."""
    from .batch import PREDICTIONS, PredictionsError, read_predictions

    if not results:
        typer.echo("note: the results hold no detections: every AP is 0", err=True)
    try:
        records = read_predictions(out / PREDICTIONS, repair=False) if out.is_dir() else []
    except PredictionsError:
        return
    failed = [r for r in records if r["error"] is not None]
    if failed:
        typer.echo(f"note: {len(failed)} of {len(records)} images of this run failed (first: "
                   f"{failed[0]['file']}: {failed[0]['error']}); they count as images without "
                   "detections", err=True)
