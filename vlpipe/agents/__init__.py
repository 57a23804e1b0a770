"""Expert nodes: each module wraps one expert (MLLM, SAM, Grounding DINO, OCR, ...)."""
