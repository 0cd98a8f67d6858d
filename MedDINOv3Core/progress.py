"""Progress reporting and cooperative cancellation for long library calls.

Every long-running core API accepts ``progress`` (a ProgressCallback ``(stage, done, total, message)``) and ``cancel``
(a CancelToken, or any object with ``is_set()``, e.g. a threading.Event). The CLI renders progress as a tqdm bar or
JSON lines (``progress_line`` writes one, ``ProgressEvent.from_line`` reads one back: the Slicer job runner,
MedDINOv3Slicer/MedDINOv3SlicerLib/jobs.py); Cancel in Slicer kills the job process, while in-process callers set the
token.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

PROGRESS_KEYS = ("stage", "done", "total", "message")


class ProgressCallback(Protocol):
    """The one progress-callback type: ``progress(stage, done, total, message)``."""

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


def report(progress: ProgressCallback | None, stage: str, done: int, total: int, message: str = "") -> None:
    """Call ``progress`` if given."""
    if progress is not None:
        progress(stage, done, total, message)


def check_cancel(cancel) -> None:
    """Raise Cancelled if ``cancel`` (a CancelToken / threading.Event or None) is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled by the user")


def progress_line(
    stage: str, done: int | None = None, total: int | None = None, message: str | None = None, **data: Any
) -> str:
    """One JSON progress line (no trailing newline): ``{"stage", "done", "total", "message", **data}``.

    ``done``, ``total`` or ``message`` given as None are left out of the line; ``data`` holds a command's result
    keys (e.g. ``path``, ``model``, ``checkpoint``, ``cache`` on its final ``"done"`` line).
    """
    line: dict[str, Any] = {"stage": stage}
    for key, value in (("done", done), ("total", total), ("message", message)):
        if value is not None:
            line[key] = value
    overlap = set(PROGRESS_KEYS) & set(data)
    if overlap:
        raise ValueError(f"payload keys {sorted(overlap)} clash with the progress keys")
    line.update(data)
    return json.dumps(line)


def write_progress_line(stream, stage: str, *args: Any, **kwargs: Any) -> None:
    """Write ``progress_line(stage, *args, **kwargs)`` and a newline to ``stream`` and flush it."""
    stream.write(progress_line(stage, *args, **kwargs) + "\n")
    stream.flush()


@dataclass
class ProgressEvent:
    """One progress line of a job: stage, done of total, message; ``data`` holds any extra keys of the line."""

    stage: str
    done: int = 0
    total: int = 0
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float | None:
        """done / total in [0, 1], or None when the total is unknown."""
        return min(1.0, max(0.0, self.done / self.total)) if self.total else None

    @classmethod
    def from_line(cls, line: str) -> ProgressEvent | None:
        """Parse one line written by ``progress_line``; None when it is not a JSON progress object."""
        line = line.strip()
        if not line.startswith("{"):
            return None
        try:
            obj = json.loads(line)
        except ValueError:
            return None
        if not isinstance(obj, dict) or "stage" not in obj:
            return None

        def as_int(value: Any) -> int:
            try:
                return int(value)
            except (TypeError, ValueError):
                return 0

        return cls(
            stage=str(obj["stage"]),
            done=as_int(obj.get("done", 0)),
            total=as_int(obj.get("total", 0)),
            message=str(obj.get("message") or ""),
            data={k: v for k, v in obj.items() if k not in PROGRESS_KEYS},
        )
