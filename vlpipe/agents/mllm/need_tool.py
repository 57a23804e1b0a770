"""The need-tool decision (P²G, training-free): does a question need grounding, OCR, both?

Policies behind one node:

- ``mllm``: the MLLM's own judgment, its next-token probabilities over the options
  (none / objects / text / both) for the ``need_tool`` prompt, every casing and leading-space
  variant of an option ("None", " none", "NONE") read as one (log-sum-exp, see
  :func:`.model.option_probs`);
- ``calibrated``: a small logistic model (:class:`Calibrator`, fitted by ``vlpipe calibrate``)
  over features = the MLLM's option probabilities, the OCR detector's text-area fraction and
  question cues;
- ``always`` / ``never``: both tools / none, for ablations.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...prompts import load_prompt
from ..backends import OCR_BACKENDS
from ..ports import BOOL, DECISION, IMAGE, TEXT
from .nodes import MllmNode

OPTIONS = ("none", "objects", "text", "both")
TEXT_CUES = re.compile(r"\b(written|write|say|says|read|text|sign|word|words|letter|letters|"
                       r"number|numbers|title|label|brand|price|date|menu|logo|name)\b", re.I)
OBJECT_CUES = re.compile(r"\b(where|colou?r|how many|left|right|which|holding|wearing|behind|"
                         r"next to|on top|under|above|below|small|tiny|find)\b", re.I)
FEATURES = ("p_none", "p_objects", "p_text", "p_both", "text_area", "cue_text", "cue_objects")


def question_cues(question: str) -> tuple[float, float]:
    """(mentions text, mentions locating objects) as 0/1."""
    return float(bool(TEXT_CUES.search(question))), float(bool(OBJECT_CUES.search(question)))


def choice_from_needs(objects: bool, text: bool) -> str:
    return OPTIONS[int(objects) + 2 * int(text)]


@dataclass
class Calibrator:
    """Two logistic models on standardized features: P(needs objects), P(needs text)."""

    mean: np.ndarray  # (F,)
    std: np.ndarray  # (F,)
    weights: np.ndarray  # (2, F)
    bias: np.ndarray  # (2,)
    features: tuple[str, ...] = FEATURES

    @classmethod
    def fit(cls, X: np.ndarray, labels: list[str], l2: float = 1e-3, steps: int = 200) -> Calibrator:
        """X (n, F) features, labels from OPTIONS. L2-regularized logistic regression (LBFGS)."""
        bad = sorted(set(labels) - set(OPTIONS))
        if bad:
            raise ValueError(f"unknown labels {bad} (use {', '.join(OPTIONS)})")
        X = np.asarray(X, np.float64)
        mean, std = X.mean(0), X.std(0) + 1e-6
        x = torch.tensor((X - mean) / std, dtype=torch.float64)
        idx = np.array([OPTIONS.index(lab) for lab in labels])
        y = torch.tensor(np.stack([idx % 2, idx // 2], 1), dtype=torch.float64)  # (n, 2)
        w = torch.zeros(2, X.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w.T + b, y)
            loss = loss + l2 * (w ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return cls(mean, std, w.detach().numpy(), b.detach().numpy())

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(n, F) -> (n, 2): P(needs objects), P(needs text)."""
        z = (np.asarray(X, np.float64) - self.mean) / self.std @ self.weights.T + self.bias
        return 1 / (1 + np.exp(-z))

    def decide(self, x: np.ndarray) -> str:
        p_obj, p_text = self.predict_proba(np.asarray(x)[None])[0]
        return choice_from_needs(p_obj > 0.5, p_text > 0.5)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({
            "features": list(self.features), "mean": self.mean.tolist(), "std": self.std.tolist(),
            "weights": self.weights.tolist(), "bias": self.bias.tolist()}, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Calibrator:
        try:
            data = json.loads(Path(path).read_text())
            if tuple(data["features"]) != FEATURES:
                raise ValueError(f"features {data['features']} differ from {list(FEATURES)}")
            return cls(*(np.asarray(data[k], np.float64)
                         for k in ("mean", "std", "weights", "bias")))
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"cannot read calibrator '{path}': {exc}") from None


class NeedToolNode(MllmNode):
    """image + question -> decision {choice, probs, policy}, objects (bool), text (bool)."""

    servable = True
    inputs = {"image": IMAGE, "question": TEXT}
    outputs = {"decision": DECISION, "objects": BOOL, "text": BOOL}
    max_batch = 1

    def __init__(self, name: str, *, policy: str = "mllm", calibrator: str = "",
                 ocr: str = "rapidocr", **kw) -> None:
        super().__init__(name, **kw)
        if policy not in ("mllm", "calibrated", "always", "never"):
            raise ValueError(f"unknown need-tool policy {policy!r} "
                             "(known: mllm, calibrated, always, never)")
        if policy == "calibrated" and not calibrator:
            raise ValueError("policy 'calibrated' needs a calibrator file (vlpipe calibrate)")
        OCR_BACKENDS.check(ocr)
        self.policy, self.ocr_name = policy, ocr
        self.calibrator = Calibrator.load(calibrator) if policy == "calibrated" else None

    def option_probs(self, image: np.ndarray, question: str) -> np.ndarray:
        """(4,) the MLLM's probabilities of none / objects / text / both."""
        mllm = self.mllm
        prompt = mllm.prompt(load_prompt("need_tool").format(question=question))
        return mllm.option_probs(image, prompt, list(OPTIONS))

    def features(self, image: np.ndarray, question: str) -> np.ndarray:
        """(F,) calibrator features, in FEATURES order."""
        ocr = OCR_BACKENDS.load(self.pool, self.ocr_name, None, "cpu", None)
        return np.array([*self.option_probs(image, question), ocr.text_area_fraction(image),
                         *question_cues(question)])

    def decide(self, image: np.ndarray, question: str) -> dict:
        if self.policy in ("always", "never"):
            return {"choice": "both" if self.policy == "always" else "none", "probs": None,
                    "policy": self.policy}
        if self.policy == "mllm":
            probs = self.option_probs(image, question)
            choice = OPTIONS[int(np.argmax(probs))]
        else:
            x = self.features(image, question)
            probs, choice = x[:4], self.calibrator.decide(x)
        return {"choice": choice, "probs": dict(zip(OPTIONS, map(float, probs))),
                "policy": self.policy}

    def run(self, batch):
        out = []
        for item in batch:
            decision = self.decide(item["image"], item["question"])
            c = decision["choice"]
            out.append({"decision": decision, "objects": c in ("objects", "both"),
                        "text": c in ("text", "both")})
        return out
