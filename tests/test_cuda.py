"""The recipes on a CUDA GPU (tiny models): every model on the GPU, in float32 and float16,
results well-formed and, for the attention flow, equal to the CPU's. Skipped without CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlpipe.agents.mllm.attention import attention_flow
from vlpipe.io import load_image
from vlpipe.pipeline import ModelPool, Pipeline

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def check(dets, hw):
    h, w = hw
    assert dets.mask is not None and dets.mask.shape == (len(dets), h, w)
    assert (dets.xyxy[:, :2] >= 0).all() and (dets.xyxy[:, 2] <= w).all()
    assert (dets.xyxy[:, 3] <= h).all() and np.isfinite(dets.confidence).all()


def test_attention_flow_on_cuda_equals_cpu():
    g = torch.Generator().manual_seed(0)
    upper = torch.ones(64, 64, dtype=torch.bool).triu(1)
    layers = [torch.randn(4, 64, 64, generator=g).masked_fill_(upper, float("-inf")).softmax(-1)
              for _ in range(6)]
    cpu = attention_flow(iter(layers))
    gpu = attention_flow(layer.cuda() for layer in layers)
    assert gpu.is_cuda and gpu.dtype == torch.float32
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)
    half = attention_flow(layer.cuda().half() for layer in layers)  # head chunks, no fp32 copy
    torch.testing.assert_close(half.cpu(), cpu, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("mllm, sam_backend, dtype", [
    ("llava", "hf", "float32"), ("llava_next", "hf2", "float16"), ("qwen2_vl", "official", "float16"),
    ("llava_next", "sam3", "float16"),
])
def test_detect_runs_on_the_gpu(tiny_models, shared_images, mllm, sam_backend, dtype):
    sam = {"hf": "sam_hf", "hf2": "sam_hf2", "official": "sam_official/sam_tiny.safetensors",
           "sam3": "sam3_tracker"}
    pool = ModelPool()
    pipe = Pipeline.load(tiny_models / "detect.yaml", pool, device="cuda", dtype=dtype,
                         mllm=str(tiny_models / mllm), sam=str(tiny_models / sam[sam_backend]),
                         sam_backend=sam_backend, sam_variant="tiny")
    image = load_image(shared_images / "dog.jpg")
    result = pipe.run(image=image)
    assert result.error is None, result.error
    assert result.outputs["maps"], "the tiny MLLM named nothing"
    check(result.outputs["detections"], image.shape[:2])
    assert {k.device for k in pool.keys()} == {"cuda"}
    summary = pipe.trace.summary()
    assert summary["objects"]["gpu_peak_mb"] > 0 and summary["sam"]["gpu_peak_mb"] > 0


@pytest.mark.parametrize("backend", ["grounding_dino", "owlv2", "sam3"])
def test_ground_runs_on_the_gpu(tiny_models, shared_images, backend):
    pipe = Pipeline.load(tiny_models / "ground.yaml", ModelPool(), device="cuda",
                         grounding_backend=backend, grounding=str(tiny_models / backend),
                         box_threshold=0.0)
    image = load_image(shared_images / "cat_dog.jpeg")
    result = pipe.run(image=image, phrases="a dog. a cat.")
    assert result.error is None, result.error
    dets = result.outputs["detections"]
    assert len(dets) and set(dets.data["class_name"]) <= {"a dog", "a cat"}
    h, w = image.shape[:2]
    assert (dets.xyxy >= 0).all() and (dets.xyxy[:, [0, 2]] <= w).all()
