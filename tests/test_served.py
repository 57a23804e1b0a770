"""A served MLLM for `ask`: an OpenAI-compatible fake server on localhost, the need-tool
decision from top_logprobs, phrases and the final answer with crops as extra images, the key
from the environment and never logged."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from typer.testing import CliRunner

from vlpipe.agents.mllm.served import ServedMllm, option_probs_from_top
from vlpipe.cli import app
from vlpipe.io import load_image
from vlpipe.pipeline import Pipeline

KEY = "sk-test-0123456789-secret"


class FakeServer:
    """Answers /v1/chat/completions like vLLM: max_tokens=1 with logprobs -> the first token's
    ``top`` log-probabilities; otherwise ``answers[k]`` for the k-th text request, in order."""

    def __init__(self, top: list[tuple[str, float]], answers: list[str]) -> None:
        self.top, self.answers, self.requests = top, list(answers), []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                        "body": body})
                if body.get("logprobs"):
                    message, logprobs = "", {"content": [{
                        "token": server.top[0][0], "logprob": server.top[0][1], "bytes": None,
                        "top_logprobs": [{"token": t, "logprob": lp, "bytes": None}
                                         for t, lp in server.top]}]}
                else:
                    message, logprobs = server.answers.pop(0), None
                reply = {"id": "x", "object": "chat.completion", "created": 0,
                         "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": "stop", "logprobs": logprobs,
                                      "message": {"role": "assistant", "content": message}}]}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(top, answers=()):
        servers.append(FakeServer(top, answers))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_option_probs_sum_every_variant_of_an_option():
    # "None" and " none" both start "none": log-sum-exp of -0.5 and -1.5; "Text" -2.0;
    # "Both" -3.0; "objects" absent; "the" starts no option
    top = [("None", -0.5), (" none", -1.5), ("Text", -2.0), ("Both", -3.0), ("the", -0.1)]
    probs = option_probs_from_top(top, ["none", "objects", "text", "both"])
    none = math.log(math.exp(-0.5) + math.exp(-1.5))
    z = math.exp(none) + math.exp(-2.0) + math.exp(-3.0)
    np.testing.assert_allclose(probs, [math.exp(none) / z, 0.0, math.exp(-2.0) / z,
                                       math.exp(-3.0) / z], rtol=1e-6)
    # nothing recognisable: uniform
    np.testing.assert_allclose(option_probs_from_top([("the", -0.1)], ["a1", "b1"]), [0.5, 0.5])


def test_ask_with_a_served_mllm_decides_none_and_answers(serve, shared_images, monkeypatch):
    monkeypatch.setenv("VLPIPE_API_KEY", KEY)
    server = serve([("▁None", -0.2), ("Text", -2.5)], ["It says MovieShotsDataset."])
    pipe = Pipeline.load("ask", mllm="served-model", mllm_endpoint=server.url, device="cpu")
    result = pipe.run(image=load_image(shared_images / "en.jpg"), question="Is this a sign?")
    assert result.error is None, result.error
    assert result.outputs["decision"]["choice"] == "none"
    assert result.outputs["answer"] == "It says MovieShotsDataset."
    assert result.skipped == ["phrases", "ground", "read"]
    decide, answer = server.requests
    assert decide["body"]["max_tokens"] == 1 and decide["body"]["top_logprobs"] == 20
    assert decide["body"]["model"] == "served-model" and decide["auth"] == f"Bearer {KEY}"
    content = answer["body"]["messages"][0]["content"]
    assert [c["type"] for c in content] == ["image_url", "text"]
    assert content[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert "Is this a sign?" in content[1]["text"]
    assert KEY not in repr(pipe.graph.nodes["answer"].mllm)


def test_ask_with_a_served_mllm_runs_the_tools_and_sends_crops(serve, tiny_models,
                                                               shared_images):
    server = serve([("both", -0.1), ("none", -4.0)],
                   ["the dog, the cat", "A dog and a cat."])
    pipe = Pipeline.load(tiny_models / "ask.yaml", mllm="served-model",
                         mllm_endpoint=server.url, box_threshold=0.0)
    result = pipe.run(image=load_image(shared_images / "cat_dog.jpeg"),
                      question="What animals are here?")
    assert result.error is None, result.error
    assert result.outputs["decision"]["choice"] == "both" and result.skipped == []
    assert result.outputs["answer"] == "A dog and a cat."
    crops = result.outputs["evidence"]["crops"]
    assert crops > 0
    answer = server.requests[-1]["body"]["messages"][0]["content"]
    assert sum(c["type"] == "image_url" for c in answer) == 1 + crops


def test_detect_nodes_refuse_an_endpoint():
    from vlpipe.agents.mllm.nodes import AttentionMapNode, ObjectListNode

    for cls in (ObjectListNode, AttentionMapNode):
        with pytest.raises(ValueError, match="needs local weights"):
            cls("n", model="m", endpoint="http://127.0.0.1:1/v1")


def test_vlpipe_run_ask_with_mllm_endpoint(serve, shared_images):
    server = serve([("None", -0.1)], ["STOP"])
    out = CliRunner().invoke(app, ["run", "ask", str(shared_images / "en.jpg"), "What is it?",
                                   "--set", f"mllm_endpoint={server.url}", "--set",
                                   "mllm=served-model", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["answer"] == "STOP"


def test_served_mllm_reads_the_key_from_the_environment(monkeypatch):
    monkeypatch.delenv("VLPIPE_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    served = ServedMllm("http://127.0.0.1:1/v1", "m")
    assert served.client.api_key == KEY and KEY not in repr(served)
