"""Batch runs: :func:`run` a detect-style pipeline over the images of a folder or an annotation
file into an output folder, resumably, on this process (:class:`LocalEngine`) or a Ray cluster
(:class:`RayEngine`).

One module per concern: ``inputs`` (what a run reads), ``predictions`` (``predictions.jsonl``,
resume), ``lock`` (one run per output folder), ``records`` (an image's record and line),
``pictures`` (annotated images, attention overlays), ``coco`` (``results.json``), ``engine``
(the engine protocol and run options), ``local_engine`` and ``ray_engine`` (the engines),
``driver`` (:func:`run`).
"""

from .coco import RESULTS, write_results
from .driver import run
from .engine import Engine, Job, RunOptions, batch_pipeline
from .inputs import Entry, Inputs, collect_inputs, is_output_folder, list_inputs
from .local_engine import LocalEngine, prefetch, torch_threads
from .lock import LOCK, OutputError, lock_output
from .pictures import output_name, save_pictures
from .predictions import PREDICTIONS, PredictionsError, pending, read_predictions
from .ray_engine import RayEngine, RayNotInstalled, RayRunError, RaySummary, import_ray
from .records import Line, Loaded, load_entry
from .summary import MaxFailures, Progress, Summary

__all__ = ["LOCK", "PREDICTIONS", "RESULTS", "Engine", "Entry", "Inputs", "Job", "Line",
           "LocalEngine", "Loaded", "MaxFailures", "OutputError", "PredictionsError", "Progress",
           "RayEngine", "RayNotInstalled", "RayRunError", "RaySummary", "RunOptions", "Summary",
           "batch_pipeline", "collect_inputs", "import_ray", "is_output_folder", "list_inputs",
           "load_entry", "lock_output", "output_name", "pending", "prefetch", "read_predictions",
           "run", "save_pictures", "torch_threads", "write_results"]
