"""Compose a custom DAG with your own nodes, in Python and as a pipeline file.

    python examples/custom_dag.py [IMAGE_DIR]

The graph, for every image:

* ``gate`` (user node, :class:`BrightnessGate`): mean brightness and "is it bright enough?";
* ``colour`` (user node, :class:`ColourStats`): dominant named colour and Canny edge density;
* ``tiles`` (built-in :class:`~vlpipe.agents.tiles.node.TilesNode`): full image + 2x2 tiles,
  run only ``when`` the gate says the image is bright enough;
* ``views`` (user node, :class:`ViewSummary`): the number of views and the brightest tile.

Then the same graph is built from a YAML string after registering the user node types, and the
two are checked to give the same results. Cheap numpy / OpenCV work only: no model is loaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import yaml

from vlpipe.agents.tiles.node import TilesNode
from vlpipe.io import iter_image_files, load_image
from vlpipe.pipeline import Graph, Node, Pipeline, PipelineSpec, registry

IMAGES = Path(__file__).resolve().parents[1] / "tests/data/images"

PALETTE = {"black": (0, 0, 0), "white": (255, 255, 255), "grey": (128, 128, 128),
           "red": (200, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 200),
           "yellow": (230, 210, 50), "brown": (120, 80, 40), "orange": (240, 140, 30)}


# -- user nodes ---------------------------------------------------------------------------------
class BrightnessGate(Node):
    """image -> mean brightness (0-255) and whether it reaches ``min_brightness``."""

    inputs = {"image": "image"}
    outputs = {"bright": "bool", "brightness": "number"}

    def __init__(self, name: str, *, min_brightness: float = 60.0, **kw) -> None:
        super().__init__(name, **kw)
        self.min_brightness = float(min_brightness)

    def run(self, batch):
        out = []
        for item in batch:
            value = float(cv2.cvtColor(item["image"], cv2.COLOR_RGB2GRAY).mean())
            out.append({"bright": value >= self.min_brightness, "brightness": round(value, 1)})
        return out


class ColourStats(Node):
    """image -> the dominant colour (nearest :data:`PALETTE` entry by pixel count) and the
    share of Canny edge pixels."""

    inputs = {"image": "image"}
    outputs = {"dominant": "text", "edges": "number"}

    def __init__(self, name: str, *, stride: int = 4, **kw) -> None:
        super().__init__(name, **kw)
        self.stride = int(stride)
        self.names = list(PALETTE)
        self.colours = np.array(list(PALETTE.values()), np.float32)

    def run(self, batch):
        return [self._one(item["image"]) for item in batch]

    def _one(self, image: np.ndarray) -> dict:
        pixels = image[::self.stride, ::self.stride].reshape(-1, 3).astype(np.float32)
        nearest = ((pixels[:, None] - self.colours[None]) ** 2).sum(-1).argmin(1)
        counts = np.bincount(nearest, minlength=len(self.names))
        edges = cv2.Canny(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), 100, 200)
        return {"dominant": self.names[int(counts.argmax())],
                "edges": round(float((edges > 0).mean()), 3)}


class ViewSummary(Node):
    """views -> how many views there are and which tile (1-based; 0 = full image) is brightest."""

    inputs = {"views": "views"}
    outputs = {"n_views": "number", "brightest_view": "number"}

    def run(self, batch):
        out = []
        for item in batch:
            means = [float(v.image.mean()) for v in item["views"]]
            out.append({"n_views": len(means), "brightest_view": int(np.argmax(means))})
        return out


# -- the graph, in Python -----------------------------------------------------------------------
def build_graph(min_brightness: float = 60.0) -> Graph:
    g = Graph({"image": "image"})
    g.add(BrightnessGate("gate", min_brightness=min_brightness), image="input.image")
    g.add(ColourStats("colour"), image="input.image")
    g.add(TilesNode("tiles", tiles="2x2"), when="gate.bright", image="input.image")
    g.add(ViewSummary("views"), views="tiles.views")
    for key, ref in {"brightness": "gate.brightness", "bright": "gate.bright",
                     "dominant": "colour.dominant", "edges": "colour.edges",
                     "n_views": "views.n_views", "brightest_view": "views.brightest_view"}.items():
        g.output(key, ref)
    return g


# -- the same graph, as a pipeline file ---------------------------------------------------------
PIPELINE_YAML = """
name: custom
params: {min_brightness: 60}
inputs: {image: image}
nodes:
  gate:
    type: brightness_gate
    in: {image: input.image}
    params: {min_brightness: "${min_brightness}"}
  colour: {type: colour_stats, in: {image: input.image}}
  tiles:  {type: tiles, in: {image: input.image}, params: {tiles: 2x2}, when: gate.bright}
  views:  {type: view_summary, in: {views: tiles.views}}
outputs:
  brightness: gate.brightness
  bright: gate.bright
  dominant: colour.dominant
  edges: colour.edges
  n_views: views.n_views
  brightest_view: views.brightest_view
"""


def pipeline_from_yaml(text: str = PIPELINE_YAML, **params) -> Pipeline:
    """Register the user node types, then build the pipeline from YAML text."""
    registry.register("brightness_gate", BrightnessGate)
    registry.register("colour_stats", ColourStats)
    registry.register("view_summary", ViewSummary)
    spec = PipelineSpec.model_validate(yaml.safe_load(text))
    return Pipeline(spec.build(**params), name=spec.name)


# -- inputs -------------------------------------------------------------------------------------
def load_images(folder: Path) -> list[tuple[str, np.ndarray]]:
    """The images of ``folder`` (generated ones when it is missing), plus one dark image so the
    condition has something to skip."""
    if folder.is_dir():
        images = [(p.name, load_image(p)) for p in iter_image_files(folder)]
    else:
        print(f"(no {folder}: using generated images)")
        rng = np.random.default_rng(0)
        ramp = np.linspace(0, 255, 320, dtype=np.float32)
        images = [("gradient.png", np.stack([np.tile(ramp, (240, 1))] * 3, -1).astype(np.uint8)),
                  ("noise.png", rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)),
                  ("blue.png", np.full((240, 320, 3), (40, 80, 200), np.uint8))]
    night = np.random.default_rng(1).integers(0, 40, (240, 320, 3), dtype=np.uint8)
    return images + [("night (generated).png", night)]


def main(argv: list[str]) -> int:
    folder = Path(argv[0]) if argv else IMAGES
    images = load_images(folder)
    pipe = Pipeline(build_graph(), name="custom")
    print("== mermaid ==")
    print(pipe.to_mermaid())

    print(f"\n== results ({len(images)} images, batch size 4) ==")
    results = list(pipe.stream(({"image": im} for _, im in images), batch_size=4))
    for (name, _), res in zip(images, results):
        if res.error:
            print(f"{name:24s} ERROR {res.error}")
            continue
        o = res.outputs
        tiles = (f"{o['n_views']} views, brightest view {o['brightest_view']}"
                 if o["bright"] else f"tiles skipped ({', '.join(res.skipped)})")
        print(f"{name:24s} brightness {o['brightness']:5.1f}  bright={o['bright']!s:5s}  "
              f"dominant={o['dominant']:6s}  edges={o['edges']:.3f}  {tiles}")

    print("\n== trace summary ==")
    print(f"{'node':8s} {'calls':>5s} {'items':>5s} {'ms':>8s}")
    for node, s in pipe.trace.summary().items():
        print(f"{node:8s} {s['calls']:5d} {s['items']:5d} {s['seconds'] * 1e3:8.1f}")

    print("\n== the same graph from YAML ==")
    from_yaml = pipeline_from_yaml()
    same = [r.outputs for r in from_yaml.run_batch([{"image": im} for _, im in images])]
    assert same == [r.outputs for r in results], "YAML and Python graphs disagree"
    print(f"plan: {' -> '.join(from_yaml.executor.plan)}")
    print(f"YAML pipeline gives the same results for all {len(images)} images")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
