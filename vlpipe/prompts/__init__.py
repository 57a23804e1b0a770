"""Prompt templates as text files in this folder, loaded by name."""

from __future__ import annotations

from pathlib import Path

PROMPTS_DIR = Path(__file__).resolve().parent


def load_prompt(name: str) -> str:
    """The text of ``prompts/<name>.txt`` (trailing newline stripped)."""
    path = PROMPTS_DIR / f"{name}.txt"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROMPTS_DIR.glob("*.txt")))
        raise FileNotFoundError(f"no prompt {name!r} in {PROMPTS_DIR} (known: {known})")
    return path.read_text().rstrip("\n")


def load_questions(name: str = "list_objects", k: int | None = None) -> list[str]:
    """The first ``k`` non-empty lines of a prompt file (all when k is None)."""
    lines = [line.strip() for line in load_prompt(name).splitlines() if line.strip()]
    if k is not None and not 1 <= k <= len(lines):
        raise ValueError(f"asked for {k} questions; prompts/{name}.txt has {len(lines)}")
    return lines[:k]
