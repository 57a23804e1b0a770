"""SAM: attention-map point prompts -> masks, with VL-SAM's iterative refinement.

The nodes prompt any backend of :mod:`.backends` (:class:`~.backends.SamBackend`). The image
encoder runs once per view, over a stack of an image's views (``batch_size`` per forward);
every object's prompt of a view goes through the mask decoder in one batched call per
refinement round (round 1: per step of the explain-away search):

1. points from the attention map -> masks, one instance at a time: each mask is explained away
   in its map and the strongest residual peak prompts the next instance;
2. the same points plus round 1's low-res mask logits as the mask prompt;
3. the attention map weighted by the cell coverage of round 2's mask, points resampled (the
   previous points when the mask holds no activation), plus round 2's logits; further rounds
   repeat step 3.

Only grid cells whose centres lie inside the view are sampled, so every point is inside it.

Score of a detection = SAM's predicted IoU × the attention share of the mask: the mean of the
min-max normalised attention map (in image space) inside the mask. A mask on the object the
MLLM attended to scores near its predicted IoU; a mask that drifted off the attention peak
scores low. Every round's detections are kept (``data["round"]``) for the merge.
"""

from __future__ import annotations

import numpy as np
import supervision as sv
import torch

from ...maps import min_max
from ...pipeline import Node
from ..backends import SAM_BACKENDS
from ..detections import CLASS_NAME, QUESTION, ROUND, VIEW_BOX, concat, empty_detections
from ..hub import resolve_device
from ..ports import DETECTIONS, IMAGE, OBJECT_MAPS, VIEWS
from ..tiles.grid import to_full_image
from ..views import ObjectMap, View
from .backends import SamBackend
from .masks import BoxMasks
from .points import (InstanceSearch, inside_cells, points_to_image, pool_to_grid, refined_prompt,
                     resize_map)


def mask_coverage(mask: np.ndarray, region, grid: tuple[int, int],
                  offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Image mask (H, W) bool, or its crop at ``offset`` = (x, y), -> (gh, gw) float32: the
    fraction of each cell's patch (the grid covering ``region`` = x0, y0, x1, y1 in image
    pixels) that the mask covers, so a mask smaller than a cell still marks its cells."""
    x0, y0, x1, y1 = (int(round(v)) for v in region)  # as pool_to_grid rounds, then shifted
    dx, dy = offset
    return pool_to_grid(mask.astype(np.float32), (x0 - dx, y0 - dy, x1 - dx, y1 - dy), grid)


def _coverage(masks: BoxMasks, k: int, m: ObjectMap) -> np.ndarray:
    """Mask k of a view on the grid of map ``m`` (zeros for an empty mask)."""
    x0, y0 = masks.boxes[k][:2]
    if x0 < 0:
        return np.zeros(tuple(m.map.shape), np.float32)
    return mask_coverage(masks.crops[k], m.region, tuple(m.map.shape), (x0, y0))


def _pad_prompts(prompts) -> tuple[np.ndarray, np.ndarray]:
    """Lists of (P_k, 2) coords / (P_k,) labels -> (K, P, 2), (K, P) padded with label -1."""
    p = max(len(c) for c, _ in prompts)
    coords = np.zeros((len(prompts), p, 2), np.float32)
    labels = np.full((len(prompts), p), -1, np.int64)
    for k, (c, lab) in enumerate(prompts):
        coords[k, :len(c)], labels[k, :len(lab)] = c, lab
    return coords, labels


def _attention_share(heat: np.ndarray, masks: BoxMasks, k: int) -> float:
    """Mean of ``heat`` (H, W) inside mask k."""
    x0, y0, x1, y1 = masks.boxes[k]
    return float(heat[y0:y1 + 1, x0:x1 + 1][masks.crops[k]].mean()) if x0 >= 0 else 0.0


class _SamModelNode(Node):
    """Shared parameters of the SAM nodes: which weights, which backend, where; and
    ``largest_region``: keep only each mask's largest 8-connected region (off by default; a
    prompt asks for one object, but an occluded object may come in pieces)."""

    def __init__(self, name: str, *, model: str, backend: str = "hf", variant: str = "vit_h",
                 device: str = "auto", largest_region: bool = False, **params) -> None:
        super().__init__(name, device=resolve_device(device), **params)
        SAM_BACKENDS.check(backend)
        if not isinstance(largest_region, bool):
            raise ValueError(f"largest_region must be true or false, got {largest_region!r}")
        self.model_id, self.backend, self.variant = model, backend, variant
        self.largest_region = largest_region

    @property
    def sam(self) -> SamBackend:
        return SAM_BACKENDS.load(self.pool, self.backend, self.model_id, self.device, "float32",
                                 variant=self.variant)

    def predict(self, sam: SamBackend, points: np.ndarray, labels: np.ndarray,
                logits: torch.Tensor | None, boxes: np.ndarray | None = None
                ) -> tuple[BoxMasks, np.ndarray, torch.Tensor]:
        """:meth:`SamBackend.predict`, each mask cut to its largest region where the node says
        so (the low-res logits fed to the next round stay SAM's own)."""
        masks, iou, low = sam.predict(points, labels, logits, boxes=boxes)
        return (masks.largest_regions() if self.largest_region else masks), iou, low


class SamBoxNode(_SamModelNode):
    """image + detections (boxes, e.g. from grounding) -> the same objects with SAM masks, as
    Grounded-SAM does: every box prompts SAM, all in one decoder call per image. Score = the
    box's confidence × SAM's predicted IoU (clipped to [0, 1]); the box becomes the mask's
    extent (``data["view_box"]``: the whole image)."""

    inputs = {"image": IMAGE, "detections": DETECTIONS}
    outputs = {"detections": DETECTIONS}
    max_batch = 1

    def run(self, batch):
        sam = self.sam
        out = []
        for item in batch:
            image, dets = item["image"], item["detections"]
            if len(dets) == 0:
                out.append({"detections": empty_detections()})
                continue
            sam.set_image(image)
            k = len(dets)
            masks, iou, _ = self.predict(sam, np.zeros((k, 0, 2), np.float32),
                                         np.zeros((k, 0), np.int64), None, boxes=dets.xyxy)
            confidence = np.ones(k) if dets.confidence is None else dets.confidence
            segmented = _mask_detections(masks, confidence * np.clip(iou, 0.0, 1.0),
                                         {CLASS_NAME: np.asarray(dets.data[CLASS_NAME])})
            h, w = image.shape[:2]
            segmented.data[VIEW_BOX] = np.tile(np.array([0, 0, w, h]), (len(segmented), 1))
            out.append({"detections": segmented})
        return out


class SamNode(_SamModelNode):
    """views + maps -> detections (full-image coordinates, every round kept).

    Each map prompts SAM once per instance, found by explaining each mask away in the map (at
    most ``max_instances`` masks; see :class:`~vlpipe.agents.sam.points.InstanceSearch`), so three
    touching cups give three masks. Each detection records its view's box (``data["view_box"]``, x0, y0,
    x1, y1 in full-image pixels) for the merge. ``batch_size`` views share one image-encoder
    forward; it bounds the encoder's transient memory (SAM ViT-H's global-attention layers hold
    (16, 4096, 4096) float32 scores per view, 1 GiB)."""

    inputs = {"views": VIEWS, "maps": OBJECT_MAPS}
    outputs = {"detections": DETECTIONS}
    max_batch = 1

    def __init__(self, name: str, *, rounds: int = 3, threshold: float = 0.5,
                 n_positive: int = 1, n_negative: int = 1, max_instances: int = 8,
                 min_peak: float = 0.1, batch_size: int = 4, **params) -> None:
        super().__init__(name, **params)
        if int(rounds) < 1:
            raise ValueError("rounds must be at least 1")
        if int(max_instances) < 1:
            raise ValueError("max_instances must be at least 1")
        if int(batch_size) < 1:
            raise ValueError("batch_size must be at least 1")
        self.rounds, self.threshold = int(rounds), float(threshold)
        self.n_positive, self.n_negative = int(n_positive), int(n_negative)
        self.max_instances, self.min_peak = int(max_instances), float(min_peak)
        self.batch_size = int(batch_size)

    def run(self, batch):
        """Per image: the views that have maps go through the image encoder ``batch_size`` at a
        time (one forward per stack), then each view is decoded as alone."""
        sam = self.sam
        out = []
        for item in batch:
            views, maps = item["views"], item["maps"]
            by_view = [[m for m in maps if m.view == v] for v in range(len(views))]
            todo = [v for v in range(len(views)) if by_view[v]]
            per_view = [empty_detections() for _ in views]
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start:start + self.batch_size]
                for v, state in zip(chunk, sam.encode([views[v].image for v in chunk])):
                    sam.use(state)
                    per_view[v] = self.segment_view(sam, views[v], by_view[v])
            out.append({"detections": concat(per_view)})
        return out

    def segment_view(self, sam: SamBackend, view: View, maps: list[ObjectMap]) -> sv.Detections:
        """All rounds for every instance of the objects of one view. ``sam`` holds the view's
        image already (``set_image`` or ``use``)."""
        if not maps:
            return empty_detections()
        h, w = view.image.shape[:2]
        valid = [inside_cells(tuple(m.map.shape), m.region, (h, w)) for m in maps]
        heat = [min_max(resize_map(m.map, m.region, (h, w))) for m in maps]
        targets, prompts, (masks, iou, logits) = self._explain_away(sam, maps, valid)
        rounds = []
        for r in range(self.rounds):
            if r == 1:  # round 2: the same points plus round 1's logits
                masks, iou, logits = self._decode(sam, prompts, logits)
            elif r >= 2:  # round 3+: resample inside the previous round's mask
                prompts = [self._points(maps[k], valid[k], masks, j, prompts[j])
                           for j, k in enumerate(targets)]
                masks, iou, logits = self._decode(sam, prompts, logits)
            share = [_attention_share(heat[k], masks, j) for j, k in enumerate(targets)]
            score = np.clip(iou, 0.0, 1.0) * np.array(share)  # predicted IoU may leave [0, 1]
            rounds.append(_detections(masks, score, [maps[k] for k in targets], r))
        dets = to_full_image(concat(rounds), view.tile, view.full_hw)
        t = view.tile
        dets.data[VIEW_BOX] = np.tile(np.array([t.x0, t.y0, t.x1, t.y1]), (len(dets), 1))
        return dets

    def _explain_away(self, sam: SamBackend, maps: list[ObjectMap], valid: list[np.ndarray]):
        """Round 1 (crowded instances): every map's :class:`~vlpipe.agents.sam.points.InstanceSearch`
        prompts its strongest remaining instance, all maps in one decoder call per step, and
        each mask is explained away in its map, until no map has residual activation left.
        Returns (map index of each instance, its (points, labels) in image pixels, round 1's
        (masks, predicted IoU, low-res logits) in the same order)."""
        searches = [InstanceSearch(m.map, valid=v, threshold=self.threshold,
                                   min_peak=self.min_peak, max_instances=self.max_instances,
                                   n_positive=self.n_positive, n_negative=self.n_negative)
                    for m, v in zip(maps, valid)]
        targets, prompts, steps = [], [], []
        while True:
            step = [(k, p) for k, p in enumerate(s.next_prompt() for s in searches)
                    if p is not None]
            if not step:
                break
            points = [(points_to_image(p, tuple(maps[k].map.shape), maps[k].region), p.labels)
                      for k, p in step]
            masks, iou, logits = self._decode(sam, points, None)
            for j, (k, _) in enumerate(step):
                searches[k].explain(_coverage(masks, j, maps[k]))
            targets += [k for k, _ in step]
            prompts += points
            steps.append((masks, iou, logits))
        masks, iou, logits = zip(*steps)
        return targets, prompts, (BoxMasks.concat(masks), np.concatenate(iou),
                                  torch.cat(logits))

    def _decode(self, sam: SamBackend, prompts, logits
                ) -> tuple[BoxMasks, np.ndarray, torch.Tensor]:
        """One decoder call for K prompts [(points, labels)] (+ K low-res logits or None)."""
        return self.predict(sam, *_pad_prompts(prompts), logits)

    def _points(self, m: ObjectMap, valid: np.ndarray, masks: BoxMasks, k: int,
                previous: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Round 3+ prompt of instance k: resampled inside its last mask, or the previous points
        when that mask covers none of the map's activation (never another instance's peak)."""
        p = refined_prompt(m.map, _coverage(masks, k, m), threshold=self.threshold,
                           n_positive=self.n_positive, n_negative=self.n_negative, valid=valid)
        if p is None:
            return previous
        return points_to_image(p, tuple(m.map.shape), m.region), p.labels


def _detections(masks: BoxMasks, score: np.ndarray, maps: list[ObjectMap], rnd: int):
    """K masks of one round -> Detections of the non-empty ones (every view, question and round
    is kept for the merge)."""
    return _mask_detections(masks, score, {
        CLASS_NAME: np.array([m.name for m in maps]), ROUND: np.full(len(maps), rnd),
        QUESTION: np.array([m.question for m in maps])})


def _mask_detections(masks: BoxMasks, score: np.ndarray, data: dict) -> sv.Detections:
    """K masks, (K,) scores, per-mask data -> Detections of the non-empty masks, boxes = the
    masks' pixel-edge extents, masks stored as crop-RLE ``sv.CompactMask`` (dense full-image
    masks would take K·H·W bytes each)."""
    keep = masks.nonempty()
    # pixel-edge boxes: a mask covering columns 3..5 spans x 3.0 to 6.0
    xyxy = masks.boxes[keep].astype(np.float32) + np.float32([0, 0, 1, 1])
    return sv.Detections(
        xyxy=xyxy.reshape(-1, 4), mask=masks.to_compact(),
        confidence=np.asarray(score)[keep].astype(np.float32),
        data={key: np.asarray(v)[keep] for key, v in data.items()})
