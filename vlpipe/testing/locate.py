"""Oracle points and boxes answers for ``detect-branches`` in the oracle world (bench and tests
only, never a recipe default).

The oracle locator answers "locate every X" from the ground truth as an MLLM that points or
boxes would, with its failures, drawn from a generator seeded by ``seed`` and the image's pixels
(same scene and seed, same answer):

* misses, likelier for small objects (``MISS[kind][size]``, COCO size ranges);
* jitter: a box's edges move by a normal draw of ``BOX_JITTER`` times its width or height; a
  point is the object's pixel nearest its centroid (on a ring, not in its hole) moved by
  ``POINT_JITTER`` times the box size (it may fall off a thin object, and then SAM gets
  background or a neighbour);
* boxes only: two touching instances of one name boxed as one (``MERGE_TOUCHING``), as
  grounding MLLMs do in crowds;
* a hallucinated box or point at a random place for a name, with probability ``FALSE_ALARM``.

The grounding expert of this world (``oracle_crowd`` backend) is :mod:`.oracle`'s oracle
grounding (every named instance at least 24 px on both sides) that also boxes touching instances
of one name as one, as often as the MLLM does (Grounding DINO's known failure in crowds).

The rates were set once from what the issue describes (small objects missed most, crowds merged),
before any run on the held-out seed.
"""

from __future__ import annotations

import numpy as np
import supervision as sv

from .oracle import OracleGrounding, OracleWorld, _key, oracle_spec
from ..agents.backends import GROUNDING_BACKENDS
from ..agents.detections import CLASS_NAME, VIEW_BOX
from ..agents.mllm.locate import merge_points
from ..agents.ports import DETECTIONS, IMAGE, PHRASES, POINTS
from ..pipeline import Node, registry
from ..pipeline.spec import NodeSpec

MISS = {"boxes": {"small": 0.5, "medium": 0.15, "large": 0.05},
        "points": {"small": 0.3, "medium": 0.1, "large": 0.05}}
BOX_JITTER = 0.08
POINT_JITTER = 0.12
MERGE_TOUCHING = 0.3
FALSE_ALARM = 0.1


def _size(area: float) -> str:
    return "small" if area < 32 ** 2 else "medium" if area < 96 ** 2 else "large"


def _rng(seed: int, image: np.ndarray) -> np.random.Generator:
    """A generator for one image: the same pixels and seed draw the same failures."""
    return np.random.default_rng([seed, int(_key(image)[:8], 16)])


class OracleCrowdGrounding(OracleGrounding):
    """The oracle grounding with touching instances of one name merged (:func:`_merge_touching`);
    the merged box keeps the score 0.5."""

    def __init__(self, world: OracleWorld, seed: int = 0) -> None:
        super().__init__(world)
        self.seed = seed

    def detect(self, images, phrases) -> list[sv.Detections]:
        out = []
        for image, dets in zip(images, super().detect(images, phrases)):
            rng, xyxy, names = _rng(self.seed, image), [], []
            for name in dict.fromkeys(dets.data[CLASS_NAME]):
                boxes = _merge_touching(list(dets.xyxy[dets.data[CLASS_NAME] == name]), rng)
                xyxy += boxes
                names += [name] * len(boxes)
            out.append(sv.Detections(xyxy=np.asarray(xyxy, np.float32).reshape(-1, 4),
                                     confidence=np.full(len(xyxy), 0.5, np.float32),
                                     data={CLASS_NAME: np.array(names, dtype=str)}))
        return out


@GROUNDING_BACKENDS.register("oracle_crowd")
def load_oracle_crowd_grounding(weights: str, device: str, dtype: str) -> OracleCrowdGrounding:
    """``weights``: the world's COCO annotation file (opened here unless this process has)."""
    return OracleCrowdGrounding(OracleWorld.open(weights))


class _OracleLocate(Node):
    """image + phrases -> the locator's answer for every phrase (:meth:`answer`), gathered."""

    inputs = {"image": IMAGE, "phrases": PHRASES}
    kind = ""

    def __init__(self, name: str, *, gt: str, images: str | None = None, seed: int = 0,
                 **kw) -> None:
        super().__init__(name, **kw)
        self.world = OracleWorld.open(gt, images)
        self.seed = int(seed)

    def run(self, batch):
        out = []
        for item in batch:
            image = item["image"]
            rng = _rng(self.seed, image)
            parts = [self.answer(image, phrase, rng) for phrase in item["phrases"]]
            (port,) = self.outputs
            out.append({port: self.gather(parts, image.shape[:2])})
        return out

    def found(self, image: np.ndarray, phrase: str, rng: np.random.Generator
              ) -> list[np.ndarray]:
        """The masks of the instances of ``phrase`` the locator does not miss."""
        masks = [m for n, m in self.world.instances(image) if n == phrase]
        return [m for m in masks if rng.random() >= MISS[self.kind][_size(m.sum())]]


class OracleBoxesNode(_OracleLocate):
    """image + phrases -> detections: jittered (sometimes merged) boxes, confidence 1."""

    outputs = {"detections": DETECTIONS}
    kind = "boxes"

    def answer(self, image, phrase: str, rng) -> tuple[str, np.ndarray]:
        """(phrase, (K, 4) boxes in image pixels)."""
        h, w = image.shape[:2]
        boxes = [sv.mask_to_xyxy(m[None])[0] + [0, 0, 1, 1] for m in self.found(image, phrase, rng)]
        boxes = _merge_touching(boxes, rng)
        if rng.random() < FALSE_ALARM:
            x, y = rng.uniform(0, w - 16), rng.uniform(0, h - 16)
            boxes.append(np.array([x, y, x + 16 + rng.uniform(0, 48), y + 16 + rng.uniform(0, 48)]))
        jittered = [np.clip(b + rng.normal(0, BOX_JITTER, 4) * np.tile(b[2:] - b[:2], 2), 0,
                            [w, h, w, h]) for b in boxes]
        return phrase, np.asarray(jittered, np.float32).reshape(-1, 4)

    @staticmethod
    def gather(parts, hw) -> sv.Detections:
        xyxy = np.concatenate([b for _, b in parts] or [np.zeros((0, 4), np.float32)])
        names = [p for p, b in parts for _ in b]
        return sv.Detections(xyxy=xyxy, confidence=np.ones(len(xyxy), np.float32),
                             data={CLASS_NAME: np.array(names, dtype=str),
                                   VIEW_BOX: np.tile([0, 0, hw[1], hw[0]], (len(xyxy), 1))})


def _merge_touching(boxes: list[np.ndarray], rng) -> list[np.ndarray]:
    """Each pair of neighbouring boxes (gap under a tenth of their size) becomes their union
    with probability ``MERGE_TOUCHING`` (each box merged once at most)."""
    out, used = [], set()
    for i, a in enumerate(boxes):
        if i in used:
            continue
        for j in range(i + 1, len(boxes)):
            b = boxes[j]
            gap = max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])
            if j not in used and gap < 0.1 * min((a[2:] - a[:2]).min(), (b[2:] - b[:2]).min()) \
                    and rng.random() < MERGE_TOUCHING:
                a = np.concatenate([np.minimum(a[:2], b[:2]), np.maximum(a[2:], b[2:])])
                used.add(j)
                break
        out.append(a)
    return out


class OraclePointsNode(_OracleLocate):
    """image + phrases -> points: one jittered point per instance found."""

    outputs = {"points": POINTS}
    kind = "points"

    def answer(self, image, phrase: str, rng) -> sv.KeyPoints:
        h, w = image.shape[:2]
        xy = []
        for m in self.found(image, phrase, rng):
            rows, cols = np.nonzero(m)
            size = [cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
            k = np.argmin((cols - cols.mean()) ** 2 + (rows - rows.mean()) ** 2)
            on = [cols[k] + 0.5, rows[k] + 0.5]  # the object's pixel nearest its centroid
            xy.append(on + rng.normal(0, POINT_JITTER, 2) * size)
        if rng.random() < FALSE_ALARM:
            xy.append([rng.uniform(0, w), rng.uniform(0, h)])
        xy = np.clip(np.asarray(xy, np.float32).reshape(-1, 2), 0, [w - 1, h - 1])
        return sv.KeyPoints(xy=xy[:, None], data={CLASS_NAME: np.full(len(xy), phrase)})

    @staticmethod
    def gather(parts, hw) -> sv.KeyPoints:
        return merge_points(parts)


registry.register("oracle_boxes", OracleBoxesNode)
registry.register("oracle_points", OraclePointsNode)


def branches_spec(gt, images=None, *, locate_seed: int = 0, **options):
    """``detect-branches`` with every expert an oracle (:func:`.oracle.oracle_spec`), the
    locator's points and boxes from :class:`OraclePointsNode` / :class:`OracleBoxesNode` and
    the grounding :class:`OracleCrowdGrounding`."""
    spec, params = oracle_spec(gt, images, recipe="detect-branches", **options)
    spec.nodes["maps"].when = "pick.attention"  # oracle_spec's oracle maps node has no switch
    common = {"gt": str(gt), "images": None if images is None else str(images),
              "seed": locate_seed}
    inputs = {"image": "input.image", "phrases": "names.phrases"}
    spec.nodes["locate_points"] = NodeSpec(type="oracle_points", inputs=inputs, params=common,
                                           when="pick.points")
    spec.nodes["locate_boxes"] = NodeSpec(type="oracle_boxes", inputs=inputs, params=common,
                                          when="pick.boxes")
    return spec, {**params, "grounding_backend": "oracle_crowd"}
