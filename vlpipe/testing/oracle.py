"""Oracle experts for the detect recipe: a world in which detect can be right.

Used only by ``bench/oracle.py``, ``bench/synthetic.py`` and the tests, never by a recipe. Given
a COCO/LVIS dataset:

* ``oracle_objects`` names, for every view and question, the categories with ground-truth pixels
  in the part of the view the MLLM would see;
* ``oracle_maps`` makes each name's attention map by pooling its ground-truth masks onto the
  vision grid, through the same layout code as the real family (the processor of each family of
  :data:`~vlpipe.agents.mllm.families.FAMILIES` built from the released model's config, no
  weights);
* the ``oracle`` SAM backend returns the true instance under the first positive point (nothing
  when the point is on background, when any point lies outside the image, or when a negative
  point lies on that instance), or for a box prompt the instance whose box overlaps it most,
  with predicted IoU 1;
* the ``oracle`` grounding backend (detect-fused) finds every instance of a named category at
  least 24 px wide and high, score 0.5.

Everything else — tiles, points, refinement rounds, merge, results, name mapping, eval — is the
production code. The experts find the ground truth of a view from its pixels: every image of the
dataset is hashed when the world opens, and each tile is registered by ``oracle_objects``.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import supervision as sv
import torch

from ..agents.mllm.families import fit_image, get_family, token_grid
from ..agents.mllm.model import Generation
from ..agents.ports import OBJECT_LISTS, OBJECT_MAPS, VIEWS
from ..agents.sam.points import pool_to_grid
from ..agents.backends import GROUNDING_BACKENDS, SAM_BACKENDS
from ..agents.detections import CLASS_NAME
from ..agents.sam.backends import SamBackend
from ..agents.sam.masks import BoxMasks
from ..agents.views import ObjectList, ObjectMap, View
from ..agents.tiles.grid import Tile
from ..io import load_image
from ..pipeline import Node, Pipeline, PipelineSpec, registry, resolve_pipeline
from ..pipeline.spec import NodeSpec
from ..results import decode_mask
from ..batch import list_inputs

@lru_cache(maxsize=None)
def family_processor(family: str) -> SimpleNamespace:
    """The image side of the family's released processor (:attr:`Family.released`), built once."""
    return get_family(family).released()


def _key(pixels: np.ndarray) -> str:
    pixels = np.ascontiguousarray(pixels)
    return hashlib.blake2b(pixels.tobytes() + str(pixels.shape).encode(), digest_size=16).hexdigest()


class OracleWorld:
    """A dataset's ground truth, found again from the pixels of an image or of a view of it."""

    _open: dict[str, OracleWorld] = {}

    def __init__(self, gt: str | Path, images: str | Path | None = None) -> None:
        entries, data = list_inputs(gt, images)
        self.names = {c["id"]: c["name"] for c in data["categories"]}
        self.annotations = defaultdict(list)
        for a in data["annotations"]:
            self.annotations[a["image_id"]].append(a)
        self.views: dict[str, tuple[int, Tile]] = {}
        for e in entries:
            pixels = load_image(e.path)
            h, w = pixels.shape[:2]
            self.views[_key(pixels)] = (e.image_id, Tile(0, 0, w, h))
        self._maps: dict[tuple, tuple[dict, tuple]] = {}

    @classmethod
    def open(cls, gt: str | Path, images: str | Path | None = None) -> OracleWorld:
        """The world of ``gt`` (opened once per process)."""
        key = str(Path(gt).resolve())
        if key not in cls._open:
            cls._open[key] = cls(gt, images)
        return cls._open[key]

    def register(self, views: list[View]) -> None:
        """Make every view of one image findable by its pixels (views[0] is the full image)."""
        image_id, _ = self.views[_key(views[0].image)]
        for v in views[1:]:
            self.views[_key(v.image)] = (image_id, v.tile)

    @lru_cache(maxsize=64)
    def _instances(self, image_id: int) -> list[tuple[str, np.ndarray]]:
        return [(self.names[a["category_id"]], decode_mask(a["segmentation"]))
                for a in self.annotations[image_id]]

    def instances(self, pixels: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """[(category name, (h, w) bool mask within the view)] of the instances in a view."""
        try:
            image_id, tile = self.views[_key(pixels)]
        except KeyError:
            raise KeyError("the oracle does not know this image: not in its dataset, or a tile "
                           "not registered by oracle_objects") from None
        out = [(name, tile.crop(m)) for name, m in self._instances(image_id)]
        return [(name, m) for name, m in out if m.any()]

    def maps(self, view: View, family: str, image_fit: str) -> tuple[dict[str, torch.Tensor], tuple]:
        """({name: (gh, gw) coverage of its instances on the family's vision grid}, region) for
        the names with ground truth in the region the family sees of this view."""
        key = (_key(view.image), family, image_fit)
        if key not in self._maps:
            processor = family_processor(family)
            fitted, offset = fit_image(family, processor, view.image, image_fit)
            inputs = processor.image_processor(images=fitted, return_tensors="pt")
            _, grid, region = token_grid(family, processor, inputs, 0, fitted.shape[:2], offset)
            union: dict[str, np.ndarray] = {}
            for name, mask in self.instances(view.image):
                union[name] = union.get(name, False) | mask
            pooled = {name: pool_to_grid(m.astype(np.float32), region, grid)
                      for name, m in union.items()}
            self._maps[key] = ({n: torch.from_numpy(m) for n, m in pooled.items() if m.max() > 0},
                               region)
        return self._maps[key]


class OracleObjectsNode(Node):
    """views -> objects: every category seen in each view, for each of ``questions``."""

    inputs = {"views": VIEWS}
    outputs = {"objects": OBJECT_LISTS}

    def __init__(self, name: str, *, gt: str, images: str | None = None, family: str = "llava",
                 image_fit: str = "pad", questions: int = 1, **kw) -> None:
        super().__init__(name, **kw)
        self.world = OracleWorld.open(gt, images)
        self.family, self.image_fit, self.questions = family, image_fit, int(questions)

    def run(self, batch):
        empty = torch.zeros(0, dtype=torch.long)
        out = []
        for item in batch:
            self.world.register(item["views"])
            lists = []
            for v, view in enumerate(item["views"]):
                names = sorted(self.world.maps(view, self.family, self.image_fit)[0])
                gen = Generation(empty, ", ".join(names), stopped=True)
                lists += [ObjectList(v, q, gen, "", [(n, []) for n in names])
                          for q in range(self.questions)]
            out.append({"objects": lists})
        return out


class OracleMapsNode(Node):
    """views + objects -> maps: each name's ground truth pooled onto the family's vision grid."""

    inputs = {"views": VIEWS, "objects": OBJECT_LISTS}
    outputs = {"maps": OBJECT_MAPS}

    def __init__(self, name: str, *, gt: str, images: str | None = None, family: str = "llava",
                 image_fit: str = "pad", **kw) -> None:
        super().__init__(name, **kw)
        self.world = OracleWorld.open(gt, images)
        self.family, self.image_fit = family, image_fit

    def run(self, batch):
        out = []
        for item in batch:
            maps = []
            for obj in item["objects"]:
                pooled, region = self.world.maps(item["views"][obj.view], self.family,
                                                 self.image_fit)
                maps += [ObjectMap(n, obj.view, obj.question, pooled[n], region)
                         for n, _ in obj.names]
            out.append({"maps": maps})
        return out


class OracleSam(SamBackend):
    """The true instance under each prompt's first positive point, as a SAM that fails where a
    real one would: nothing on background, nothing when any point of the prompt lies outside the
    image (nothing answers there), and nothing when a negative point lies on the instance (a
    real SAM cuts the object at a negative point)."""

    def __init__(self, world: OracleWorld) -> None:
        self.world = world

    def encode(self, images):
        return list(images)  # no encoder: the state is the image

    def use(self, image):
        self.hw = image.shape[:2]
        self.masks = [m for _, m in self.world.instances(image)]

    def predict(self, points, labels, mask_logits, boxes=None):
        h, w = self.hw
        masks = np.zeros((len(points), h, w), dtype=bool)
        for k, (pts, labs) in enumerate(zip(points, labels)):
            pts = pts[labs >= 0]
            labs = labs[labs >= 0]
            if len(pts) and not ((pts >= 0) & (pts < [w, h])).all():
                continue
            cells = pts.astype(np.int64)  # (x, y) -> the pixel (column, row) it lies in
            if (labs == 1).any():
                col, row = cells[labs == 1][0]
                hit = next((m for m in self.masks if m[row, col]), None)
            elif boxes is not None:
                hit = self._best_in_box(boxes[k])
            else:
                hit = None
            if hit is not None and not hit[cells[labs == 0, 1], cells[labs == 0, 0]].any():
                masks[k] = hit
        return BoxMasks.from_dense(masks), np.ones(len(points), np.float32), torch.zeros(
            len(points), 1, 8, 8)

    def _best_in_box(self, box) -> np.ndarray | None:
        """The instance whose box overlaps ``box`` (x0, y0, x1, y1) most (IoU), if any."""
        if not self.masks:
            return None
        xyxy = sv.mask_to_xyxy(np.stack(self.masks)).astype(np.float32) + [0, 0, 1, 1]
        iou = sv.box_iou_batch(np.asarray(box, np.float32)[None], xyxy)[0]
        return self.masks[int(iou.argmax())] if iou.max() > 0 else None


class OracleGrounding:
    """A text-prompted detector that finds every instance of a named category whose box is at
    least ``min_size`` px on both sides (below it a real detector's resolution gives out),
    score 0.5."""

    def __init__(self, world: OracleWorld, min_size: int = 24) -> None:
        self.world, self.min_size = world, min_size

    def detect(self, images, phrases) -> list[sv.Detections]:
        out = []
        for image, wanted in zip(images, phrases):
            found = [(name, m) for name, m in self.world.instances(image) if name in wanted]
            xyxy = (sv.mask_to_xyxy(np.stack([m for _, m in found])).astype(np.float32)
                    + [0, 0, 1, 1]) if found else np.zeros((0, 4), np.float32)
            big = ((xyxy[:, 2] - xyxy[:, 0] >= self.min_size)
                   & (xyxy[:, 3] - xyxy[:, 1] >= self.min_size))
            out.append(sv.Detections(xyxy=xyxy[big], confidence=np.full(int(big.sum()), 0.5,
                                                                          np.float32),
                                     data={CLASS_NAME: np.array([n for n, _ in found])[big]
                                           if found else np.array([], dtype=str)}))
        return out


registry.register("oracle_objects", OracleObjectsNode)
registry.register("oracle_maps", OracleMapsNode)


@SAM_BACKENDS.register("oracle")
def load_oracle_sam(weights: str, device: str, dtype: str) -> OracleSam:
    """``weights``: the world's COCO annotation file (opened here unless this process has)."""
    return OracleSam(OracleWorld.open(weights))


@GROUNDING_BACKENDS.register("oracle")
def load_oracle_grounding(weights: str, device: str, dtype: str) -> OracleGrounding:
    """``weights`` as for :func:`load_oracle_sam`."""
    return OracleGrounding(OracleWorld.open(weights))


def oracle_spec(gt: str | Path, images: str | Path | None = None, *, family: str = "llava",
                image_fit: str = "pad", tiles: str = "2x2", questions: int = 2, rounds: int = 3,
                max_instances: int = 8, merge: dict | None = None,
                recipe: str = "detect") -> tuple[PipelineSpec, dict]:
    """The ``detect`` or ``detect-fused`` recipe's spec, and its params, with the oracle experts
    in place of the MLLM, SAM (and the grounding expert); ``merge`` params replace the recipe's
    merge params. The fused recipe also outputs ``fused``: both branches before the merge."""
    world_key = str(Path(gt).resolve())
    OracleWorld.open(gt, images)
    common = {"gt": str(gt), "images": None if images is None else str(images),
              "family": family, "image_fit": image_fit}
    spec = PipelineSpec.load(resolve_pipeline(recipe))
    extra = {}
    if recipe != "detect":  # detect-fused, detect-branches: grounding too
        extra = {"grounding": world_key, "grounding_backend": "oracle"}
        spec.outputs["fused"] = "fuse.detections"
    spec.nodes["objects"] = NodeSpec(type="oracle_objects", inputs={"views": "views.views"},
                                     params={**common, "questions": questions})
    spec.nodes["maps"] = NodeSpec(type="oracle_maps",
                                  inputs={"views": "views.views", "objects": "objects.objects"},
                                  params=common)
    spec.nodes["sam"].params["max_instances"] = max_instances
    if merge is not None:
        spec.nodes["merge"].params = dict(merge)
    spec.name = f"{recipe}-oracle"
    return spec, dict(tiles=tiles, questions=questions, rounds=rounds, sam=world_key,
                      sam_backend="oracle", mllm="oracle", device="cpu", **extra)


def oracle_pipeline(gt: str | Path, images: str | Path | None = None, **options) -> Pipeline:
    """The pipeline of :func:`oracle_spec`."""
    spec, params = oracle_spec(gt, images, **options)
    return Pipeline.from_spec(spec, **params)
