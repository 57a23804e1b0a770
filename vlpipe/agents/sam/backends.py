"""SAM backends behind one interface (:class:`SamBackend`), in ``SAM_BACKENDS``
(:mod:`vlpipe.agents.backends`): the official ``segment-anything`` package, transformers'
``SamModel``, transformers' ``Sam2Model`` (SAM 2) and SAM 3's tracker (``Sam3TrackerModel``,
driven as SAM 2; :mod:`.sam3`). The nodes that prompt them are in :mod:`.nodes`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch

from ..backends import SAM_BACKENDS
from ..hub import WeightsNotFound, from_pretrained, resolve_dtype
from ..thin import stretch_thin
from .masks import BoxMasks, MaskResize, upscale_in_boxes


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
                ) -> tuple[BoxMasks, np.ndarray, torch.Tensor]:
        """points (K, P, 2) float (x, y) image pixels, labels (K, P) 1/0 (-1 = padding; P may be
        0 with boxes), mask_logits (K, 1, m, m) low-res logits of a previous round or None,
        boxes (K, 4) xyxy image pixels or None.
        Returns the K masks of the image as ``BoxMasks`` (always: a dense (K, H, W) bool stack
        goes through :meth:`BoxMasks.from_dense`), predicted IoU (K,), low-res logits
        (K, 1, m, m). One decoder call for all K."""

    def resize_steps(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """How the low-res logits reach the image: (row steps, column steps) of
        :func:`~vlpipe.agents.sam.masks.chain_matrix`."""
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
