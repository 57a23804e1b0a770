"""The backend contract: ``name -> builder(weights, device, dtype, **options)``, and nodes that get
their backends only through the model pool, with the options in its key."""

import pytest

from vlpipe.agents.backends import GROUNDING_BACKENDS, MLLM_BACKENDS, SAM_BACKENDS, BackendRegistry
from vlpipe.agents.grounding.node import GroundingNode
from vlpipe.agents.grounding.protocols import GroundingBackend
from vlpipe.agents.mllm.protocols import LocalMllm, MllmBackend
from vlpipe.agents.ocr.node import OcrNode
from vlpipe.pipeline import ModelPool
from vlpipe.pipeline.models import ModelKey, model_nbytes
from vlpipe.synthetic import make_scenes
from vlpipe.testing import locate, oracle  # noqa: F401  (they register the oracle backends)


@pytest.fixture
def toys():
    """A registry of two toy backends: one declares its option, one takes every option."""
    toys = BackendRegistry("toy", "toy", ())

    @toys.register("strict")
    def strict(weights, device, dtype, *, scale=1.0):
        return {"weights": weights, "scale": scale}

    @toys.register("open")
    def open_(weights, device, dtype, **options):
        return {"weights": weights, **options}

    return toys


def test_adding_a_backend_is_one_decorated_function(toys):
    assert toys.names() == ["open", "strict"]
    assert toys.build("strict", "w", "cpu", None, scale=2.0) == {"weights": "w", "scale": 2.0}
    with pytest.raises(ValueError, match=r"unknown toy backend 'nope' \(known: open, strict\)"):
        toys.build("nope", "w", "cpu", None)


def test_a_builder_gets_the_options_it_declares_and_only_those_key_the_pool(toys):
    assert toys.options("strict", {"scale": 2.0, "other": 1}) == {"scale": 2.0}
    assert toys.options("open", {"scale": 2.0, "other": 1}) == {"scale": 2.0, "other": 1}
    pool = ModelPool()
    a = toys.load(pool, "strict", "w", "cpu", None, scale=2.0, other=1)
    b = toys.load(pool, "strict", "w", "cpu", None, scale=2.0, other=2)  # other: not strict's
    c = toys.load(pool, "strict", "w", "cpu", None, scale=3.0)
    assert a is b and c is not a and pool.loads == 2
    assert pool.keys() == [ModelKey("toy-strict", "w", "cpu", "None", (("scale", 2.0),)),
                           ModelKey("toy-strict", "w", "cpu", "None", (("scale", 3.0),))]


def test_option_values_that_are_lists_or_dicts_make_a_key(toys):
    pool = ModelPool()
    first = toys.load(pool, "open", "w", "cpu", None, sizes=[1, 2], cfg={"b": 1, "a": [3]})
    again = toys.load(pool, "open", "w", "cpu", None, cfg={"a": [3], "b": 1}, sizes=[1, 2])
    other = toys.load(pool, "open", "w", "cpu", None, sizes=[1, 3], cfg={"b": 1, "a": [3]})
    assert first is again and other is not first and pool.loads == 2


def test_sam_variant_keys_the_official_backend_only():
    assert SAM_BACKENDS.options("official", {"variant": "vit_b"}) == {"variant": "vit_b"}
    assert SAM_BACKENDS.options("hf", {"variant": "vit_b"}) == {}
    assert GROUNDING_BACKENDS.options("owlv2", {"box_threshold": 0.1, "text_threshold": 0.2}) \
        == {"box_threshold": 0.1}


def grounding(name, pool, model, backend="grounding_dino", **params):
    node = GroundingNode(name, model=str(model), backend=backend, device="cpu", **params)
    node.pool = pool
    return node


def test_two_grounding_nodes_share_a_backend_only_with_the_same_options(tiny_models):
    pool = ModelPool()
    model = tiny_models / "grounding_dino"
    a = grounding("a", pool, model, box_threshold=0.3)
    b = grounding("b", pool, model, box_threshold=0.3)
    assert a.backend is b.backend and pool.loads == 1
    c = grounding("c", pool, model, box_threshold=0.5)
    assert c.backend is not a.backend and pool.loads == 2
    assert (a.backend.box_threshold, c.backend.box_threshold) == (0.3, 0.5)


def test_the_grounding_backend_is_evicted_under_the_pool_budget(tiny_models):
    sizes = [model_nbytes(GROUNDING_BACKENDS.build(name, str(tiny_models / name), "cpu",
                                                   "float32"))
             for name in ("grounding_dino", "owlv2")]
    assert min(sizes) > 0  # a backend is measured by its model
    pool = ModelPool(budget_bytes=max(sizes) + 1)  # room for one of the two
    dino = grounding("dino", pool, tiny_models / "grounding_dino")
    owl = grounding("owl", pool, tiny_models / "owlv2", backend="owlv2")
    first = dino.backend
    owl.backend
    assert pool.evictions == 1 and [k.kind for k in pool.keys()] == ["grounding-owlv2"]
    assert dino.backend is not first and pool.loads == 3  # the node kept no copy of its own


def ocr(name, pool, **params):
    node = OcrNode(name, **params)
    node.pool = pool
    return node


def test_two_ocr_nodes_share_an_engine_only_with_the_same_params():
    pool = ModelPool()
    strict = ocr("strict", pool, text_score=0.9)
    loose = ocr("loose", pool, text_score=0.3)
    assert strict.backend is not loose.backend and pool.loads == 2
    assert strict.backend.params["Global.text_score"] == 0.9
    assert loose.backend.params["Global.text_score"] == 0.3
    assert ocr("again", pool, text_score=0.9).backend is strict.backend and pool.loads == 2


def test_an_unknown_backend_is_refused_when_the_node_is_built():
    with pytest.raises(ValueError, match=r"unknown OCR backend 'tesseract' \(known: paddleocr, "
                                         r"rapidocr\)"):
        OcrNode("read", backend="tesseract")
    with pytest.raises(ValueError, match=r"unknown grounding backend 'dino' \(known: "
                                         r"grounding_dino, ") as exc:
        GroundingNode("ground", model="m", backend="dino")
    assert {"owlv2", "sam3"} <= set(str(exc.value).split("known: ")[1][:-1].split(", "))


@pytest.mark.parametrize("name", GROUNDING_BACKENDS.names())
def test_every_grounding_backend_is_a_grounding_backend(tiny_models, tmp_path, name):
    # the oracles (imported above, so the list does not depend on which tests ran first) are
    # built from a dataset's annotation file, the other backends from their weights
    weights = (make_scenes(tmp_path / "scenes", 1, seed=0) if name.startswith("oracle")
               else tiny_models / name)
    backend = GROUNDING_BACKENDS.build(name, str(weights), "cpu", "float32")
    assert isinstance(backend, GroundingBackend)


def test_local_and_served_mllms_are_mllm_backends(tiny_models):
    local = MLLM_BACKENDS.build("transformers", str(tiny_models / "llava"), "cpu", "float32")
    served = MLLM_BACKENDS.build("served", "m", "remote", None, endpoint="http://127.0.0.1:1/v1")
    assert isinstance(local, LocalMllm) and isinstance(served, MllmBackend)
    assert not isinstance(served, LocalMllm)  # no tokens, no attention: the ask nodes only
    assert not isinstance(object(), MllmBackend) and not isinstance(object(), GroundingBackend)
