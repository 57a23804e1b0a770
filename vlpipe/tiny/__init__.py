"""Tiny random-weight models for tests and offline smoke runs (``vlpipe models tiny DIR``): one
module per expert kind (:mod:`.mllm`, :mod:`.locators`, :mod:`.sam`, :mod:`.grounding`,
:mod:`.clip`); the production backends hold none.

Every model is built from a config, saved with ``save_pretrained`` (or as a safetensors
checkpoint for the official SAM) and loaded back by the same code path users take. Their outputs
are meaningless: they prove the plumbing, not the perception.
"""

from __future__ import annotations

from pathlib import Path

SEED = 0


def tiny_params(models: dict[str, Path]) -> dict[str, dict]:
    """Per built-in recipe, the params that point it at the tiny models (small and fast)."""
    return {
        "detect": {"mllm": str(models["llava"]), "sam": str(models["sam_hf"]),
                   "sam_backend": "hf", "questions": 2, "tiles": "2x2", "rounds": 3,
                   "max_new_tokens": 12, "device": "cpu"},
        "detect-fused": {"mllm": str(models["llava"]), "sam": str(models["sam_hf"]),
                         "grounding": str(models["grounding_dino"]), "box_threshold": 0.0,
                         "questions": 2, "tiles": "2x2", "rounds": 3, "max_new_tokens": 12,
                         "device": "cpu"},
        "detect-branches": {"mllm": str(models["llava"]), "locator": str(models["qwen2_5_vl"]),
                            "sam": str(models["sam_hf"]), "grounding": str(models["grounding_dino"]),
                            "box_threshold": 0.0, "questions": 1, "tiles": "1x1", "rounds": 2,
                            "max_new_tokens": 12, "locate_max_new_tokens": 16, "device": "cpu"},
        "ask": {"mllm": str(models["llava"]), "grounding": str(models["grounding_dino"]),
                "max_new_tokens": 12, "device": "cpu"},
        "ground": {"grounding": str(models["grounding_dino"]), "device": "cpu"},
        "ocr": {},
    }


def build_all(out: str | Path) -> list[Path]:
    """Every tiny model under ``out`` plus ``out/<recipe>.yaml`` for each built-in recipe."""
    import yaml

    from ..agents.mllm.families import FAMILIES, LOCATORS
    from ..pipeline import recipe_names, resolve_pipeline
    from .clip import build_tiny_clip_text
    from .grounding import build_tiny_grounding_dino, build_tiny_owlv2, build_tiny_sam3
    from .sam import build_hf_sam, build_hf_sam2, build_official_sam, build_tiny_sam3_tracker

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = {name: family.build_tiny(out / name) for name, family in FAMILIES.items()}
    models |= {name: loc.build_tiny(out / name) for name, loc in LOCATORS.items() if loc.tiny}
    models |= {
        "sam_hf": build_hf_sam(out / "sam_hf"),
        "sam_hf2": build_hf_sam2(out / "sam_hf2"),
        "sam_official": build_official_sam(out / "sam_official"),
        "sam3_tracker": build_tiny_sam3_tracker(out / "sam3_tracker"),
        "grounding_dino": build_tiny_grounding_dino(out / "grounding_dino"),
        "owlv2": build_tiny_owlv2(out / "owlv2"),
        "sam3": build_tiny_sam3(out / "sam3"),
        "clip_text": build_tiny_clip_text(out / "clip_text"),
    }
    written = list(models.values())
    for recipe, params in tiny_params(models).items():
        if recipe not in recipe_names():
            continue
        spec = yaml.safe_load(resolve_pipeline(recipe).read_text())
        spec["description"] = "Tiny random-weight models: meaningless results. " + spec.get(
            "description", "")
        spec["params"] = {**spec.get("params", {}), **params}
        path = out / f"{recipe}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
        written.append(path)
    return written
