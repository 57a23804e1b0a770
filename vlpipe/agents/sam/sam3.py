"""SAM 3's point-prompted tracker (transformers ``Sam3TrackerModel``) as the SAM backend ``sam3``.

It keeps SAM 2's prompt encoder, mask decoder and API on SAM 3's ViT, so
:class:`~vlpipe.agents.sam.backends.HfSam2` drives it unchanged. SAM 3's concept segmentation
is a grounding backend: :mod:`vlpipe.agents.grounding.sam3`.
"""

from __future__ import annotations

from ..backends import SAM_BACKENDS
from ..hub import from_pretrained, resolve_dtype
from .backends import HfSam2


@SAM_BACKENDS.register("sam3")
def load_sam3_tracker(weights: str, device: str, dtype: str) -> HfSam2:
    """``Sam3TrackerModel`` + ``Sam3TrackerProcessor`` (e.g. ``facebook/sam3``) behind the SAM 2
    interface (:class:`~vlpipe.agents.sam.backends.HfSam2`: fixed square input, multi-level embedding,
    logits clamped to ±32)."""
    from transformers import Sam3TrackerModel, Sam3TrackerProcessor

    processor = from_pretrained(Sam3TrackerProcessor, weights, "SAM 3 tracker")
    net = from_pretrained(Sam3TrackerModel, weights, "SAM 3 tracker",
                          dtype=resolve_dtype(dtype, device))
    return HfSam2(processor, net.to(device).eval())
