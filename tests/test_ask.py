"""P²G: the need-tool decision, conditional tools, the calibrator, `vlpipe run ask/ocr/ground`."""

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vlpipe.agents.grounding.crops import Crop
from vlpipe.agents.mllm.model import option_probs, option_token_ids
from vlpipe.agents.mllm.families import FAMILIES
from vlpipe.agents.mllm.nodes import AnswerNode
from vlpipe.agents.mllm.need_tool import OPTIONS, Calibrator, NeedToolNode, question_cues
from vlpipe.agents.ocr.backends import TextLine
from vlpipe.agents.mllm.phrases import parse_phrases
from vlpipe.cli import app
from vlpipe.io import load_image
from vlpipe.pipeline import ModelPool, Pipeline

runner = CliRunner()


@pytest.fixture(scope="module")
def sign(shared_images):
    return load_image(shared_images / "en.jpg")


@pytest.fixture(scope="module")
def pool():
    """One model pool for the module: each pipeline reuses the loaded models."""
    return ModelPool()


def tool_calls(pipe) -> dict[str, int]:
    """Items each node actually ran on, from the trace."""
    return {name: s["items"] for name, s in pipe.trace.summary().items()}


@pytest.mark.parametrize("policy, ran", [
    ("never", {"decide", "answer"}),
    ("always", {"decide", "phrases", "ground", "read", "answer"}),
])
def test_tools_run_only_when_the_decision_asks(tiny_models, sign, pool, policy, ran):
    pipe = Pipeline.load(tiny_models / "ask.yaml", pool, policy=policy)
    result = pipe.run(image=sign, question="What is written here?")
    assert result.error is None
    calls = tool_calls(pipe)
    assert set(calls) == ran and all(n == 1 for n in calls.values())
    decision = result.outputs["decision"]
    assert decision["choice"] == ("none" if policy == "never" else "both")
    evidence = result.outputs["evidence"]
    if policy == "never":
        assert result.skipped == ["phrases", "ground", "read"]
        assert evidence == {"crops": 0, "lines": [], "boxes": []}
    else:
        assert result.skipped == []
        # real OCR on the real image reads its title
        assert "MovieShotsDataset" in [line["text"] for line in evidence["lines"]]
    assert isinstance(result.outputs["answer"], str)


def test_mllm_policy_reads_option_probabilities(tiny_models, sign, pool):
    pipe = Pipeline.load(tiny_models / "ask.yaml", pool, policy="mllm")
    decision = pipe.run(image=sign, question="What is written here?").outputs["decision"]
    probs = decision["probs"]
    assert list(probs) == list(OPTIONS) and sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert decision["choice"] == max(probs, key=probs.get)


# The units of a family's boxes, as the answer prompt states them, and the whole image's box, for
# en.jpg (709 x 132). Pixels: the tiny Qwen processor's smart resize (factor 16, at most 96² px):
# beta = sqrt(709·132 / 9216) = 3.187, w = floor(709 / 3.187 / 16)·16 = 208,
# h = floor(132 / 3.187 / 16)·16 = 32.
BOX_TEXT = {"thousandths": ("in thousandths of its width and height", "[0, 0, 1000, 1000]"),
            "pixels": ("in pixels of the image resized to 208x32", "[0, 0, 208, 32]")}


@pytest.mark.parametrize("family", [f.name for f in FAMILIES.values() if f.boxes in BOX_TEXT])
def test_ask_end_to_end_with_qwen_families(tiny_models, sign, pool, family):
    pipe = Pipeline.load(tiny_models / "ask.yaml", pool, mllm=str(tiny_models / family),
                         policy="always", box_threshold=0.0)
    result = pipe.run(image=sign, question="What is written here?")
    assert result.error is None and result.skipped == []
    assert isinstance(result.outputs["answer"], str)
    # the Qwen families read boxes in thousandths of the image or pixels of their resized
    # input, and the prompt says so
    answer = pipe.graph.nodes["answer"]
    h, w = sign.shape[:2]
    line = TextLine("STOP", 0.9, [[0, 0], [w, 0], [w, h], [0, h]])
    _, prompt = answer.prompt_for({"image": sign, "question": "Where?", "crops": [],
                                   "lines": [line], "detections": None})
    units, whole = BOX_TEXT[FAMILIES[family].boxes]
    assert answer.mllm.family == family and units in prompt and whole in prompt


def synthetic(n, seed):
    """Features whose true rule is: objects iff p_objects + p_both > 0.5 (features 1 + 3);
    text iff the text area > 0.2 or the question mentions text."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(4), n)
    area = rng.uniform(0, 0.5, n)
    cues = rng.integers(0, 2, (n, 2)).astype(float)
    X = np.column_stack([probs, area, cues])
    objects = probs[:, 1] + probs[:, 3] > 0.5
    text = (area > 0.2) | (cues[:, 0] > 0)
    return X, [OPTIONS[int(o) + 2 * int(t)] for o, t in zip(objects, text)]


def test_calibrator_recovers_a_separating_rule_and_round_trips(tmp_path):
    X, y = synthetic(600, seed=0)
    cal = Calibrator.fit(X, y)
    X_test, y_test = synthetic(400, seed=1)
    accuracy = np.mean([cal.decide(x) == label for x, label in zip(X_test, y_test)])
    assert accuracy > 0.9
    path = tmp_path / "cal.json"
    cal.save(path)
    again = Calibrator.load(path)
    np.testing.assert_allclose(again.predict_proba(X_test), cal.predict_proba(X_test))
    bad = tmp_path / "bad.json"
    bad.write_text('{"features": ["x"]}')
    with pytest.raises(ValueError, match="cannot read calibrator"):
        Calibrator.load(bad)
    with pytest.raises(ValueError, match="unknown labels"):
        Calibrator.fit(X[:2], ["none", "maybe"])


def test_question_cues():
    assert question_cues("What is written on the sign?") == (1.0, 0.0)
    assert question_cues("Where is the red cup?") == (0.0, 1.0)
    assert question_cues("Is it sunny?") == (0.0, 0.0)


def test_calibrate_command_fits_and_the_pipeline_uses_it(tiny_models, shared_images, tmp_path,
                                                        pool):
    lines = [{"image": str(shared_images / f), "question": q, "label": lab}
             for f, q, lab in [("en.jpg", "What does the title say?", "text"),
                               ("dog.jpg", "Is this a dog?", "none"),
                               ("cat_dog.jpeg", "Where is the cat?", "objects"),
                               ("ch_en_num.jpg", "What is written on the box?", "text"),
                               ("truck.jpg", "What colour is the truck?", "objects"),
                               ("dog.jpg", "Is it daytime?", "none")]]
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("\n".join(json.dumps(x) for x in lines))
    out = tmp_path / "cal.json"
    result = runner.invoke(app, ["calibrate", str(labelled), "--out", str(out),
                                 "--pipeline", str(tiny_models / "ask.yaml")])
    assert result.exit_code == 0, result.stderr
    assert "6 examples" in result.stdout
    pipe = Pipeline.load(tiny_models / "ask.yaml", pool, policy="calibrated", calibrator=str(out))
    decision = pipe.run(image=load_image(shared_images / "en.jpg"),
                        question="What does the title say?").outputs["decision"]
    assert decision["policy"] == "calibrated" and decision["choice"] in OPTIONS


def test_calibrated_policy_without_file_is_an_error():
    with pytest.raises(ValueError, match="needs a calibrator file"):
        NeedToolNode("d", model="m", policy="calibrated")


def test_ask_ocr_and_ground_commands(tiny_models, shared_images):
    image = str(shared_images / "en.jpg")
    res = runner.invoke(app, ["run", str(tiny_models / "ask.yaml"), image,
                              "What is the title?", "--set", "policy=always", "--json"])
    assert res.exit_code == 0, res.stderr
    payload = json.loads(res.stdout)
    assert payload["decision"]["choice"] == "both" and payload["skipped"] == []
    assert payload["evidence"]["lines"]
    assert payload["tools"] == ["grounding", "ocr"]  # which tools ran
    res = runner.invoke(app, ["run", str(tiny_models / "ask.yaml"), image,
                              "What is the title?", "--set", "policy=never", "--json"])
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["tools"] == []
    res = runner.invoke(app, ["run", str(tiny_models / "ask.yaml"), image, "What is the title?"])
    assert res.exit_code == 0 and res.stdout.strip()
    res = runner.invoke(app, ["run", "ocr", image])
    assert res.exit_code == 0 and "MovieShotsDataset" in res.stdout.splitlines()
    res = runner.invoke(app, ["run", "ocr", image, "--json"])
    assert json.loads(res.stdout)["tools"] == ["ocr"]
    lines = json.loads(res.stdout)["lines"]
    assert lines[0]["text"] and len(lines[0]["box"]) == 4 and 0 < lines[0]["score"] <= 1
    res = runner.invoke(app, ["run", str(tiny_models / "ground.yaml"),
                              str(shared_images / "cat_dog.jpeg"), "a dog. a cat.",
                              "--set", "box_threshold=0.0", "--json"])
    assert res.exit_code == 0, res.stderr
    boxes = json.loads(res.stdout)["detections"]
    assert boxes and {b["name"] for b in boxes} <= {"a dog", "a cat"}
    res = runner.invoke(app, ["run", "ocr", image, "extra-arg"])
    assert res.exit_code == 2 and "takes an image and 0 more input" in res.stderr


# --------------------------------------------------------------------------------------------
# Phrases, option casing, the labelled answer prompt
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("answer, phrases", [
    ("The man in the red shirt, the dog.", ["The man in the red shirt", "the dog"]),
    ("To answer this question, you need to locate the red car and the traffic light.",
     ["the red car", "the traffic light"]),
    ("Objects: cup, table, and the lamp on the left", ["cup", "table", "the lamp on the left"]),
    ("1. **the cup**\n2. the table", ["the cup", "the table"]),
    ("The objects to be located are the cup and the table.", ["the cup", "the table"]),
    ("the sign found near the door", ["the sign found near the door"]),
    ("None.", []),
    ("No objects need to be located.", []),
    ("none", []),
])
def test_phrases_keep_referring_phrases_without_lead_ins(answer, phrases):
    assert parse_phrases(answer) == phrases


def test_phrases_cut_at_max_new_tokens_drop_the_unfinished_last():
    assert parse_phrases("the man with a hat, the dog and the c", truncated=True) == [
        "the man with a hat", "the dog"]
    assert parse_phrases("the man with a hat, the dog.", truncated=True) == [
        "the man with a hat", "the dog"]


def _word_tokenizer(pre_tokenizer, decoder, prefix: str):
    """A word-level tokenizer whose vocabulary has each option word bare and with ``prefix``
    (the leading-space marker: "▁" for Llama's SentencePiece, "Ġ" for Qwen's byte-level BPE)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "</s>": 1, prefix: 2}
    for option in OPTIONS:
        for word in (option, option.capitalize(), option.upper()):
            vocab.setdefault(word, len(vocab))
            vocab.setdefault(prefix + word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizer, decoder
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")


def llama_like():
    from tokenizers import decoders, pre_tokenizers
    return _word_tokenizer(pre_tokenizers.Metaspace(prepend_scheme="first"),
                           decoders.Metaspace(prepend_scheme="first"), "\u2581")


def qwen_like():
    from tokenizers import decoders, pre_tokenizers
    return _word_tokenizer(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
                           decoders.ByteLevel(), "\u0120")


def test_option_tokens_cover_every_casing_and_leading_space():
    llama, qwen = llama_like(), qwen_like()
    ids = llama.convert_tokens_to_ids
    # SentencePiece puts "▁" before a word, with or without a space in front
    assert option_token_ids(llama, "none") == set(ids(["\u2581none", "\u2581None", "\u2581NONE"]))
    ids = qwen.convert_tokens_to_ids
    assert option_token_ids(qwen, "none") == set(ids(["none", "None", "NONE", "\u0120none",
                                                      "\u0120None", "\u0120NONE"]))


@pytest.mark.parametrize("make, favourite, other", [
    (llama_like, "\u2581None", "\u2581none"), (qwen_like, "None", "\u0120none")])
def test_logits_that_favour_a_capitalized_variant_decide_none(make, favourite, other):
    tokenizer = make()
    logits = torch.full((len(tokenizer),), -1e4)
    ids = tokenizer.convert_tokens_to_ids
    objects = "\u2581objects" if favourite.startswith("\u2581") else "\u0120objects"
    logits[ids(favourite)], logits[ids(objects)], logits[ids(other)] = 3.0, 2.0, 0.0
    probs = option_probs(logits, tokenizer, list(OPTIONS))
    # "none" sums its variants: (e^3 + e^0) / (e^3 + e^0 + e^2); "objects" alone has e^2
    z = math.exp(3) + math.exp(0) + math.exp(2)
    np.testing.assert_allclose(probs, [(math.exp(3) + 1) / z, math.exp(2) / z, 0, 0], atol=1e-6)
    assert OPTIONS[int(np.argmax(probs))] == "none"
    # reading only the first token of "none" (the old rule) would have said "objects"
    first = tokenizer("none", add_special_tokens=False)["input_ids"][0]
    assert logits[first] < logits[ids(objects)]


@pytest.mark.parametrize("family, car, dog, stop", [
    ("llava", "[0.10, 0.10, 0.30, 0.50]", "[0.50, 0.00, 1.00, 1.00]", "[0.00, 0.50, 0.20, 1.00]"),
    ("qwen2_vl", "[100, 100, 300, 500]", "[500, 0, 1000, 1000]", "[0, 500, 200, 1000]"),
    # the tiny processor resizes 200 x 100 to 128 x 64 (smart resize: beta = sqrt(20000 / 9216)
    # = 1.473, floor(200 / 1.473 / 16)·16 = 128, floor(100 / 1.473 / 16)·16 = 64): x 0.64, y 0.64
    ("qwen2_5_vl", "[13, 6, 38, 32]", "[64, 0, 128, 64]", "[0, 32, 26, 64]"),
])
def test_answer_prompt_labels_crops_and_text_with_boxes(tiny_models, pool, family, car, dog, stop):
    node = AnswerNode("answer", model=str(tiny_models / family), device="cpu", dtype="float32",
                      max_crops=2)
    node.pool = pool
    image = np.zeros((100, 200, 3), np.uint8)  # H 100, W 200
    crops = [Crop(np.zeros((8, 8, 3), np.uint8), "the red car", np.array([20., 10., 60., 50.])),
             Crop(np.ones((8, 8, 3), np.uint8), "the dog", np.array([100., 0., 200., 100.])),
             Crop(np.ones((8, 8, 3), np.uint8), "the cat", np.array([0., 0., 10., 10.]))]
    sign = TextLine("STOP", 0.9, [[0, 50], [40, 50], [40, 100], [0, 100]])
    images, prompt = node.prompt_for({"image": image, "question": "What does the sign say?",
                                      "crops": crops, "lines": [sign]})
    assert len(images) == 3 and images[1] is crops[0].image  # max_crops=2: the cat is left out
    unit = {"llava": "as fractions of its width and height",
            "qwen2_vl": "in thousandths of its width and height (0 to 1000)",
            "qwen2_5_vl": "in pixels of the image resized to 128x64"}[family]
    assert (f"The first image is 200x100 pixels; boxes are [x0, y0, x1, y1] {unit}.\n"
            f'Image 2 is a zoomed-in crop of "the red car" at {car}.\n'
            f'Image 3 is a zoomed-in crop of "the dog" at {dog}.\n'
            f"Text read in the image (OCR), with boxes:\n"
            f'"STOP" at {stop}\n'
            "Question: What does the sign say?\n"
            "Answer the question using the image and the 2 zoomed-in crops after it.") in prompt
