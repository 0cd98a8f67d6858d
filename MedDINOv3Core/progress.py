"""Progress reporting and cooperative cancellation for long library calls.

Every long-running core API accepts ``progress`` (a callable ``(stage, done, total, message)``) and ``cancel``
(a CancelToken, or any object with ``is_set()``, e.g. a threading.Event). The CLI renders progress as a tqdm bar or
JSON lines; the Slicer job runner parses the JSON lines; Cancel in Slicer kills the job process, while in-process
callers set the token.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol


class ProgressCallback(Protocol):
    def __call__(self, stage: str, done: int, total: int, message: str = "") -> None: ...


class Cancelled(RuntimeError):
    """Raised inside a long call when its cancel token is set."""


class CancelToken:
    """A thread-safe flag a caller sets to stop a long call at its next checkpoint."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


def report(progress: Callable[..., None] | None, stage: str, done: int, total: int, message: str = "") -> None:
    """Call ``progress`` if given."""
    if progress is not None:
        progress(stage, done, total, message)


def check_cancel(cancel) -> None:
    """Raise Cancelled if ``cancel`` (a CancelToken / threading.Event or None) is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled by the user")
