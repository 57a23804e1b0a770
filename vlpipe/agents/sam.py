"""SAM: attention-map point prompts -> masks, with VL-SAM's iterative refinement.

Four backends behind one interface (:class:`SamBackend`), in ``SAM_BACKENDS``
(:mod:`.backends`): the official ``segment-anything`` package, transformers' ``SamModel``,
transformers' ``Sam2Model`` (SAM 2) and SAM 3's tracker (``Sam3TrackerModel``, driven as SAM 2;
:mod:`.sam3`). The image encoder runs once per view, over a stack of an image's views
(``batch_size`` per forward); every object's prompt of a view goes through the mask decoder in
one batched call per refinement round (round 1: per step of the explain-away search):

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

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import supervision as sv
import torch

from ..maps import min_max
from ..pipeline import Node
from .backends import SAM_BACKENDS
from .hub import WeightsNotFound, from_pretrained, resolve_device, resolve_dtype
from .sam_masks import BoxMasks, MaskResize, upscale_in_boxes
from .detections import concat, empty_detections
from .points import (InstanceSearch, inside_cells, points_to_image, pool_to_grid, refined_prompt,
                     resize_map)
from .thin import stretch_thin
from .tiles import to_full_image
from .views import ObjectMap, View


class SamBackend(ABC):
    """``encode`` runs the image encoder over a stack of images; ``use`` makes one of them the
    current image (``set_image`` = both for one image); ``predict`` decodes K objects of the
    current image at once."""

    @abstractmethod
    def encode(self, images: list[np.ndarray]) -> list:
        """images: each (H, W, 3) uint8 RGB, any sizes (each is resized to the model's input
        and padded, so they stack). One forward of the image encoder over all of them; returns
        one opaque state per image for :meth:`use`."""

    @abstractmethod
    def use(self, state) -> None:
        """Make the image of ``state`` (from :meth:`encode`) the one ``predict`` decodes."""

    def set_image(self, image: np.ndarray) -> None:
        """image (H, W, 3) uint8 RGB; runs the image encoder on it alone."""
        self.use(self.encode([image])[0])

    @abstractmethod
    def predict(self, points: np.ndarray, labels: np.ndarray, mask_logits: torch.Tensor | None,
                boxes: np.ndarray | None = None
                ) -> tuple[BoxMasks | np.ndarray, np.ndarray, torch.Tensor]:
        """points (K, P, 2) float (x, y) image pixels, labels (K, P) 1/0 (-1 = padding; P may be
        0 with boxes), mask_logits (K, 1, m, m) low-res logits of a previous round or None,
        boxes (K, 4) xyxy image pixels or None.
        Returns the K masks of the image (``BoxMasks``, or (K, H, W) bool), predicted IoU (K,),
        low-res logits (K, 1, m, m). One decoder call for all K."""

    def resize_steps(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """How the low-res logits reach the image: (row steps, column steps) of
        :func:`~vlpipe.agents.sam_masks.chain_matrix`."""
        raise NotImplementedError

    def upscale(self, low: torch.Tensor) -> BoxMasks:
        """(K, 1, m, m) logits -> masks of the image, each computed inside its box only (the
        resize matrices are made once per image and low-res size)."""
        m = low.shape[-1]
        if getattr(self, "_resize", (None,))[0] != m:
            self._resize = (m, MaskResize.chain(m, *self.resize_steps(), low.device))
        return upscale_in_boxes(low, self._resize[1])


class OfficialSam(SamBackend):
    """``segment_anything.SamPredictor`` around a model built from a variant name."""

    def __init__(self, model: torch.nn.Module) -> None:
        from segment_anything import SamPredictor

        self.model = model
        self.predictor = SamPredictor(model)

    @torch.inference_mode()
    def encode(self, images):
        """As ``SamPredictor.set_image`` for each image (longest side resized, normalised,
        padded), one encoder forward; state = ((1, C, e, e) features, original size, input
        size). An image thinner than :attr:`max_aspect` is stretched first (see
        :meth:`HfSam.encode`)."""
        p = self.predictor
        inputs = [torch.as_tensor(p.transform.apply_image(stretch_thin(im, self.max_aspect)),
                                  device=p.device).permute(2, 0, 1) for im in images]
        features = p.model.image_encoder(torch.cat([p.model.preprocess(x[None]) for x in inputs]))
        return [(features[i:i + 1], im.shape[:2], tuple(x.shape[-2:]))
                for i, (im, x) in enumerate(zip(images, inputs))]

    @property
    def max_aspect(self) -> float:
        """``img_size / patch size``: see :attr:`HfSam.max_aspect`."""
        encoder = self.model.image_encoder
        return encoder.img_size / encoder.patch_embed.proj.kernel_size[0]

    def _scale(self, xy: np.ndarray) -> np.ndarray:
        """(..., 2k) x, y pixels of the image -> of the model's input: ``apply_coords`` /
        ``apply_boxes``, with the input size encode made (it may be a stretched image's)."""
        p = self.predictor
        (h, w), (H, W) = p.input_size, p.original_size
        return xy.astype(np.float32).astype(float) * np.tile([w / W, h / H], xy.shape[-1] // 2)

    def use(self, state):
        p = self.predictor
        p.features, p.original_size, p.input_size = state
        p.is_image_set = True
        self._resize = (None,)

    def resize_steps(self):
        p = self.predictor
        (h, w), (H, W), size = p.input_size, p.original_size, p.model.image_encoder.img_size
        return [(size, h), (H, H)], [(size, w), (W, W)]

    @torch.inference_mode()
    def predict(self, points, labels, mask_logits, boxes=None):
        """``SamPredictor.predict_torch`` up to the low-res logits; then :meth:`upscale`."""
        p = self.predictor
        coords = box = None
        if points.shape[1]:
            coords = (torch.as_tensor(self._scale(points), device=p.device),
                      torch.as_tensor(labels, device=p.device))
        if boxes is not None:
            box = torch.as_tensor(self._scale(np.asarray(boxes)), device=p.device)
        sparse, dense = p.model.prompt_encoder(points=coords, boxes=box, masks=mask_logits)
        low, iou = p.model.mask_decoder(
            image_embeddings=p.features, image_pe=p.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            multimask_output=False)
        return self.upscale(low), iou[:, 0].float().cpu().numpy(), low


class HfSam(SamBackend):
    """transformers ``SamModel`` + ``SamProcessor``. The K objects go along the batch axis (the
    image embedding expanded to K), so each object can carry its own mask prompt."""

    logit_limit: float | None = None  # clamp returned low-res logits to ±this

    def __init__(self, processor, model) -> None:
        self.processor, self.model = processor, model

    @torch.inference_mode()
    def encode(self, images):
        """The processor over the images (resized and padded to one size), one
        ``get_image_embeddings`` forward; state = (embedding (1, C, e, e) or SAM 2's list of
        levels, original (1, 2) = (H, W), reshaped input size (1, 2) or None for SAM 2).
        An image thinner than :attr:`max_aspect` is stretched first; ``original`` stays its
        own size, so points and masks map to it as they would without the stretch."""
        enc = self.processor(images=[stretch_thin(im, self.max_aspect) for im in images],
                             return_tensors="pt", input_data_format="channels_last")
        original = torch.tensor([im.shape[:2] for im in images], dtype=enc["original_sizes"].dtype)
        reshaped = enc.get("reshaped_input_sizes")
        pixels = enc["pixel_values"].to(self.model.device, self.model.dtype)
        embedding = self.model.get_image_embeddings(pixels)
        pick = ((lambda i: embedding[i:i + 1]) if isinstance(embedding, torch.Tensor)
                else (lambda i: [level[i:i + 1] for level in embedding]))
        return [(pick(i), original[i:i + 1], None if reshaped is None else reshaped[i:i + 1])
                for i in range(len(images))]

    def use(self, state):
        self.embedding, self.original, self.reshaped = state
        self._resize = (None,)

    @property
    def max_aspect(self) -> float:
        """The thinnest image (long / short side) whose resize (longest side to ``size``)
        keeps one patch of the image encoder across: ``size / patch_size``."""
        return (self.processor.image_processor.size["longest_edge"]
                / self.model.config.vision_config.patch_size)

    def _point_scale(self) -> np.ndarray:
        """(x, y) factors from image pixels to the model's input frame (longest side resized)."""
        return (self.reshaped[0] / self.original[0]).flip(0).numpy()

    def _embeddings(self, k: int):
        return self.embedding.expand(k, -1, -1, -1)

    def resize_steps(self):
        """As ``post_process_masks``: to the padded square, crop the resized image, to the image."""
        pad = self.processor.image_processor.pad_size
        (h, w), (H, W) = self.reshaped[0].tolist(), self.original[0].tolist()
        return [(pad["height"], h), (H, H)], [(pad["width"], w), (W, W)]

    @torch.inference_mode()
    def predict(self, points, labels, mask_logits, boxes=None):
        k, device, dtype = len(points), self.model.device, self.model.dtype
        scale = self._point_scale()
        prompts = {}
        if points.shape[1]:
            pts = torch.as_tensor(points * scale, dtype=torch.float32, device=device)
            prompts["input_points"] = pts[:, None].to(dtype)  # (K, 1, P, 2)
            prompts["input_labels"] = torch.as_tensor(labels, device=device)[:, None]
        if boxes is not None:
            xyxy = np.asarray(boxes, np.float32) * np.tile(scale, 2)
            prompts["input_boxes"] = torch.as_tensor(xyxy, device=device)[:, None].to(dtype)
        out = self.model(
            image_embeddings=self._embeddings(k), **prompts,
            input_masks=None if mask_logits is None else mask_logits.to(dtype),
            multimask_output=False)
        low = out.pred_masks[:, 0]  # (K, 1, m, m)
        if self.logit_limit is not None:
            low = low.clamp(-self.logit_limit, self.logit_limit)
        return self.upscale(low), out.iou_scores[:, 0, 0].float().cpu().numpy(), low


class HfSam2(HfSam):
    """transformers ``Sam2Model`` + ``Sam2Processor`` (SAM 2, single images).

    SAM 2 resizes every image to a fixed square (``processor.target_size``, 1024 for the
    released checkpoints) without keeping the aspect ratio, so x and y scale separately. Its
    image embedding is a list of levels [(1, C0, 4e, 4e), (1, C1, 2e, 2e), (1, C, e, e)], each
    expanded to K. Point padding uses label -1 ("not a point") as the official predictor does;
    returned logits are clamped to ±32 as SAM 2 does."""

    logit_limit = 32.0
    max_aspect = float("inf")  # every image is resized to the same square

    def _point_scale(self) -> np.ndarray:
        h, w = self.original[0].tolist()
        size = self.processor.target_size
        return np.array([size / w, size / h], np.float32)

    def _embeddings(self, k: int):
        return [e.expand(k, -1, -1, -1) for e in self.embedding]

    def resize_steps(self):
        """As ``post_process_masks``: straight to the image."""
        H, W = self.original[0].tolist()
        return [(H, H)], [(W, W)]


# -- builders: weights, device, dtype -> backend ---------------------------------------------
@SAM_BACKENDS.register("official")
def load_official_sam(weights: str, device: str, dtype: str, *,
                      variant: str = "vit_h") -> OfficialSam:
    """Build segment-anything's ``sam_model_registry[variant]`` and load the checkpoint file
    ``weights`` (.pth via ``torch.load(weights_only=True)``, or .safetensors)."""
    from segment_anything import sam_model_registry

    if variant not in sam_model_registry:
        raise ValueError(f"unknown SAM variant {variant!r} "
                         f"(known: {', '.join(sam_model_registry)})")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsNotFound(
            f"cannot load the SAM checkpoint {weights!r}: no such file. Download the official "
            "checkpoint (e.g. sam_vit_h_4b8939.pth from the segment-anything README) and pass "
            "its path, or use backend 'hf' with a Hugging Face id such as facebook/sam-vit-huge.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    model = sam_model_registry[variant](checkpoint=None)
    model.load_state_dict(state)
    return OfficialSam(model.to(device, resolve_dtype(dtype, device)).eval())


@SAM_BACKENDS.register("hf")
def load_hf_sam(weights: str, device: str, dtype: str) -> HfSam:
    from transformers import SamModel, SamProcessor

    processor = from_pretrained(SamProcessor, weights, "SAM")
    net = from_pretrained(SamModel, weights, "SAM", dtype=resolve_dtype(dtype, device))
    return HfSam(processor, net.to(device).eval())


@SAM_BACKENDS.register("hf2")
def load_hf_sam2(weights: str, device: str, dtype: str) -> HfSam2:
    from transformers import Sam2Model, Sam2Processor

    processor = from_pretrained(Sam2Processor, weights, "SAM 2")
    net = from_pretrained(Sam2Model, weights, "SAM 2", dtype=resolve_dtype(dtype, device))
    return HfSam2(processor, net.to(device).eval())


# -- refinement -----------------------------------------------------------------------------
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
    """Shared parameters of the SAM nodes: which weights, which backend, where."""

    def __init__(self, name: str, *, model: str, backend: str = "hf", variant: str = "vit_h",
                 device: str = "auto", **params) -> None:
        super().__init__(name, device=resolve_device(device), **params)
        SAM_BACKENDS.check(backend)
        self.model_id, self.backend, self.variant = model, backend, variant

    @property
    def sam(self) -> SamBackend:
        return SAM_BACKENDS.load(self.pool, self.backend, self.model_id, self.device, "float32",
                                 variant=self.variant)


class SamBoxNode(_SamModelNode):
    """image + detections (boxes, e.g. from grounding) -> the same objects with SAM masks, as
    Grounded-SAM does: every box prompts SAM, all in one decoder call per image. Score = the
    box's confidence × SAM's predicted IoU (clipped to [0, 1]); the box becomes the mask's
    extent (``data["view_box"]``: the whole image)."""

    inputs = {"image": "image", "detections": "detections"}
    outputs = {"detections": "detections"}
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
            masks, iou, _ = sam.predict(np.zeros((k, 0, 2), np.float32), np.zeros((k, 0), np.int64),
                                        None, boxes=dets.xyxy)
            if isinstance(masks, np.ndarray):
                masks = BoxMasks.from_dense(masks)
            confidence = np.ones(k) if dets.confidence is None else dets.confidence
            segmented = _mask_detections(masks, confidence * np.clip(iou, 0.0, 1.0),
                                         {"class_name": np.asarray(dets.data["class_name"])})
            h, w = image.shape[:2]
            segmented.data["view_box"] = np.tile(np.array([0, 0, w, h]), (len(segmented), 1))
            out.append({"detections": segmented})
        return out


class SamNode(_SamModelNode):
    """views + maps -> detections (full-image coordinates, every round kept).

    Each map prompts SAM once per instance, found by explaining each mask away in the map (at
    most ``max_instances`` masks; see :class:`~vlpipe.agents.points.InstanceSearch`), so three
    touching cups give three masks. Each detection records its view's box (``data["view_box"]``, x0, y0,
    x1, y1 in full-image pixels) for the merge. ``batch_size`` views share one image-encoder
    forward; it bounds the encoder's transient memory (SAM ViT-H's global-attention layers hold
    (16, 4096, 4096) float32 scores per view, 1 GiB)."""

    inputs = {"views": "views", "maps": "object_maps"}
    outputs = {"detections": "detections"}
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
                masks, iou, logits = _decode(sam, prompts, logits)
            elif r >= 2:  # round 3+: resample inside the previous round's mask
                prompts = [self._points(maps[k], valid[k], masks, j, prompts[j])
                           for j, k in enumerate(targets)]
                masks, iou, logits = _decode(sam, prompts, logits)
            share = [_attention_share(heat[k], masks, j) for j, k in enumerate(targets)]
            score = np.clip(iou, 0.0, 1.0) * np.array(share)  # predicted IoU may leave [0, 1]
            rounds.append(_detections(masks, score, [maps[k] for k in targets], r))
        dets = to_full_image(concat(rounds), view.tile, view.full_hw)
        t = view.tile
        dets.data["view_box"] = np.tile(np.array([t.x0, t.y0, t.x1, t.y1]), (len(dets), 1))
        return dets

    def _explain_away(self, sam: SamBackend, maps: list[ObjectMap], valid: list[np.ndarray]):
        """Round 1 (crowded instances): every map's :class:`~vlpipe.agents.points.InstanceSearch`
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
            masks, iou, logits = _decode(sam, points, None)
            for j, (k, _) in enumerate(step):
                searches[k].explain(_coverage(masks, j, maps[k]))
            targets += [k for k, _ in step]
            prompts += points
            steps.append((masks, iou, logits))
        masks, iou, logits = zip(*steps)
        return targets, prompts, (BoxMasks.concat(masks), np.concatenate(iou),
                                  torch.cat(logits))

    def _points(self, m: ObjectMap, valid: np.ndarray, masks: BoxMasks, k: int,
                previous: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Round 3+ prompt of instance k: resampled inside its last mask, or the previous points
        when that mask covers none of the map's activation (never another instance's peak)."""
        p = refined_prompt(m.map, _coverage(masks, k, m), threshold=self.threshold,
                           n_positive=self.n_positive, n_negative=self.n_negative, valid=valid)
        if p is None:
            return previous
        return points_to_image(p, tuple(m.map.shape), m.region), p.labels


def _decode(sam: SamBackend, prompts, logits) -> tuple[BoxMasks, np.ndarray, torch.Tensor]:
    """One decoder call for K prompts [(points, labels)] (+ K low-res logits or None)."""
    masks, iou, logits = sam.predict(*_pad_prompts(prompts), logits)
    if isinstance(masks, np.ndarray):
        masks = BoxMasks.from_dense(masks)
    return masks, iou, logits


def _detections(masks: BoxMasks, score: np.ndarray, maps: list[ObjectMap], rnd: int):
    """K masks of one round -> Detections of the non-empty ones (every view, question and round
    is kept for the merge)."""
    return _mask_detections(masks, score, {
        "class_name": np.array([m.name for m in maps]), "round": np.full(len(maps), rnd),
        "question": np.array([m.question for m in maps])})


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
