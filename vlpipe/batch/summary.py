"""What a batch run did: :class:`Summary`, and :class:`MaxFailures` when it stopped early."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..pipeline import Trace
from .records import Line

Progress = Callable[[int, int], None]
"""``progress(done, total)``: called with 0 before the first pending image, then after each."""


@dataclass
class Summary:
    """What a run did; ``trace`` holds the node timings of a local run."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    trace: Trace | None = None

    @property
    def images_per_second(self) -> float:
        return (self.done + self.failed) / self.seconds if self.seconds else 0.0

    def add(self, line: Line, max_failures: int | None = None) -> None:
        """Count one written line; raise :class:`MaxFailures` once ``max_failures`` images have
        failed."""
        if line.error is None:
            self.done += 1
            return
        self.failed += 1
        self.errors.append(f"{line.file}: {line.error}")
        if max_failures is not None and self.failed >= max_failures:
            raise MaxFailures(f"stopped after {self.failed} failed image(s) "
                              f"(--max-failures {max_failures})", self)


class MaxFailures(RuntimeError):
    """Raised by :func:`vlpipe.batch.run` once ``max_failures`` images have failed; ``summary``
    is the run so far."""

    def __init__(self, message: str, summary: Summary) -> None:
        super().__init__(message)
        self.summary = summary
