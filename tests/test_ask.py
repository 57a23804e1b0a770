"""P²G: the need-tool decision, conditional tools, the calibrator, `vlpipe run ask/ocr/ground`."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from vlpipe.agents.need_tool import OPTIONS, Calibrator, NeedToolNode, question_cues
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
