"""JobChain: several background jobs run one after the other behind the ``Job`` interface (Qt-free).

A few-shot round is up to three ``python -m training`` processes: the volume's features (only when the module has
no matching feature cache yet), the training, the prediction. The controller drives ONE job; a ``JobChain`` looks
like one to it (``start``, ``poll``, ``running``, ``cancel``, ``result``, ``wait``, ``events``), starts each step's
job when the previous one has ended, and runs every step's ``on_finish`` on the polling (GUI) thread, where it may
touch the MRML scene. Each progress event is renamed to its step ("features", "training", "predicting"), with the
CLI's own stage in the message, so the progress bar and the status line say which step runs.

A step is ``(name, make_job)``; ``make_job(previous_result) -> Job | None`` is called when the step starts (None:
nothing to do, e.g. the features are cached already: the previous result is passed on).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from MedDINOv3Core.progress import ProgressCallback, ProgressEvent
from MedDINOv3SlicerLib.jobs import JobCancelled, poll_until_done

log = logging.getLogger(__name__)

Step = tuple[str, Callable[[Any], Any]]


class JobChain:
    """Run ``steps`` in order (see the module docstring); ``result()`` is the last step's result.

    Args:
        steps: ``(name, make_job)`` pairs; ``make_job(previous_result)`` returns a not yet started Job, or None.
        initial: the "previous result" the first step gets.
    """

    def __init__(self, steps: Sequence[Step], initial: Any = None) -> None:
        if not steps:
            raise ValueError("a job chain needs at least one step")
        self.steps = list(steps)
        self.events: list[ProgressEvent] = []
        self.jobs: dict[str, Any] = {}  # step name -> its Job (steps that ran a process)
        self.results: dict[str, Any] = {}  # step name -> its result
        self._index = -1
        self._job = None
        self._value = initial
        self._error: BaseException | None = None
        self._cancelled = False
        self._started = False
        self._unread: list[ProgressEvent] = []

    @property
    def step(self) -> str | None:
        """The name of the step that runs now (None before start and after the end)."""
        return self.steps[self._index][0] if 0 <= self._index < len(self.steps) else None

    def start(self) -> JobChain:
        if self._started:
            raise RuntimeError("this job chain was started already")
        self._started = True
        self._advance()
        return self

    def _emit(self, event: ProgressEvent) -> None:
        self.events.append(event)
        self._unread.append(event)

    def _advance(self) -> None:
        """Start the next step that has a job (steps without one pass their input on); sets the error on failure."""
        while self._error is None and not self._cancelled:
            self._index += 1
            if self._index >= len(self.steps):
                self._job = None
                return
            name, make_job = self.steps[self._index]
            try:
                job = make_job(self._value)
            except Exception as exc:  # noqa: BLE001 - reported by result(), like a failed process
                self._error = exc
                return
            if job is None:
                self.results[name] = self._value
                self._emit(ProgressEvent(name, 1, 1, "ready (cached)"))
                continue
            self.jobs[name] = job
            self._emit(ProgressEvent(name, 0, 0, "starting"))
            self._job = job.start()
            return

    def poll(self) -> list[ProgressEvent]:
        """New events since the last poll; moves on to the next step when the current one has ended."""
        job = self._job
        if job is not None:
            name = self.step
            for event in job.poll():
                message = " ".join(text for text in (event.stage, event.message) if text)
                self._emit(ProgressEvent(name, event.done, event.total, message, dict(event.data)))
            if not job.running:
                for event in job.poll():  # the last lines
                    message = " ".join(text for text in (event.stage, event.message) if text)
                    self._emit(ProgressEvent(name, event.done, event.total, message, dict(event.data)))
                try:
                    self._value = job.result()  # on_finish on this (the caller's) thread
                    self.results[name] = self._value
                except JobCancelled:
                    self._cancelled = True
                except Exception as exc:  # noqa: BLE001 - re-raised by result()
                    self._error = exc
                self._job = None
                self._advance()
        new, self._unread = self._unread, []
        return new

    @property
    def running(self) -> bool:
        if self._job is not None and not self._cancelled and self._error is None:
            return True
        return False

    @property
    def last_event(self) -> ProgressEvent | None:
        return self.events[-1] if self.events else None

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        """Kill the running step's process tree; no further step starts. ``result()`` then raises JobCancelled."""
        self._cancelled = True
        if self._job is not None:
            self._job.cancel()
        self._job = None

    def wait(
        self,
        progress: ProgressCallback | None = None,
        cancel: Any = None,
        poll_interval: float = 0.1,
        timeout: float | None = None,
    ) -> Any:
        """Block until every step has ended (see ``Job.wait``); returns ``result()``."""
        if not self._started:
            self.start()
        poll_until_done(self, progress, cancel, poll_interval, timeout, "the jobs did not finish within {} s and were")
        return self.result()

    def result(self) -> Any:
        """The last step's result, or raise JobCancelled / the failed step's error."""
        if self._cancelled:
            raise JobCancelled("cancelled by the user")
        if self._error is not None:
            raise self._error
        if not self._started:
            raise RuntimeError("the job chain was not started")
        if self.running:
            raise RuntimeError("the job chain is still running; poll until `running` is False, or call wait()")
        return self._value


__all__ = ["JobChain", "Step"]
