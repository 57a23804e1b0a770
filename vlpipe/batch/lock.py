"""The output folder's lock: one run at a time writes to an output folder (``vlpipe.lock``)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK = "vlpipe.lock"


class OutputError(RuntimeError):
    """The output folder cannot be used: not a folder, not writable, or another run holds it."""


_LOCKED: set[Path] = set()  # output folders this process holds


@contextmanager
def lock_output(out: str | Path) -> Iterator[Path]:
    """Create ``out`` if needed and hold its lock file (``out/vlpipe.lock``, flock: released
    when the process ends, even killed) for the ``with`` block; re-entrant in one process.
    Raises :class:`OutputError` when ``out`` is a file, is not writable, or another run holds
    it."""
    out = Path(out)
    if out.resolve() in _LOCKED:
        yield out
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = open(out / LOCK, "a+", encoding="utf-8")
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"--out '{out}' is not a folder") from None
    except OSError as exc:
        raise OutputError(f"cannot write to --out '{out}': {exc.strerror}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise OutputError(f"another vlpipe run is writing to '{out}' (pid "
                              f"{handle.read().strip() or '?'}); wait for it to finish or use "
                              "another --out") from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        _LOCKED.add(out.resolve())
        try:
            yield out
        finally:
            _LOCKED.discard(out.resolve())
