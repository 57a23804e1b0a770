"""The example scripts run end to end and print what they promise."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True,
                          text=True, env=env, timeout=120)


@pytest.mark.parametrize("folder", [None, "no-such-folder"], ids=["shared-images", "generated"])
def test_custom_dag_example(folder, tmp_path):
    out = run_example("custom_dag.py", *([] if folder is None else [str(tmp_path / folder)]))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for line in ["flowchart TD", "  gate -.->|when bright| tiles", "  tiles -->|views| views",
                 "== trace summary ==", "plan: gate -> colour -> tiles -> views"]:
        assert line in text.splitlines()
    # the generated dark image is gated: tiles and its consumer are skipped
    night = next(line for line in text.splitlines() if line.startswith("night (generated)"))
    assert "bright=False" in night and "tiles skipped (tiles, views)" in night
    assert "5 views" in text  # bright images went through the tiles node
    assert "YAML pipeline gives the same results" in text
    if folder is not None:
        assert "using generated images" in text
