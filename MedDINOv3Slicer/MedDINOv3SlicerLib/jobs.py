"""Background jobs: ``python -m training ...`` in a separate process, with progress lines, Cancel and a result.

Qt-free on purpose: the Widget drives a Job from a QTimer (``poll()`` every ~100 ms, then ``result()`` once
``running`` is False), tests and scripts call ``wait()``. Nothing here blocks the caller except ``wait``.

- The command is ``[python, "-m", "training", subcommand, *args, "--progress", "json"]`` (``training_command``):
  the CLI then prints one JSON object a line on stdout (``{"stage", "done", "total", "message", ...}``, written by
  MedDINOv3Core.progress.progress_line), parsed by a reader thread into ``ProgressEvent``s (also
  MedDINOv3Core.progress); stderr is collected by a second thread (the CLI's one-line error message is its last
  ``error: ...`` line).
- ``cancel()`` kills the whole process tree: the job runs in its own session (POSIX: ``start_new_session`` then
  ``killpg``, SIGTERM and SIGKILL after a grace period) or process group (Windows: ``CREATE_NEW_PROCESS_GROUP`` then
  ``taskkill /T /F``), so worker processes (data loaders, torch threads) die with it.
- ``result()`` runs ``on_finish(job)`` on the CALLER's thread (the GUI thread in Slicer: it may touch the MRML
  scene) once, after a successful exit, and returns its value; a failed job raises ``JobError`` with the CLI's
  message, a cancelled one ``JobCancelled``.
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from MedDINOv3Core.progress import ProgressCallback, ProgressEvent

log = logging.getLogger(__name__)

KILL_GRACE_S = 2.0
STDERR_LINES = 200


class JobError(RuntimeError):
    """The job's process failed; the message is the CLI's one-line error message."""

    def __init__(self, message: str, returncode: int | None = None, stderr: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


class JobCancelled(RuntimeError):
    """The job was cancelled (its process tree was killed)."""


def default_python() -> str:
    """The interpreter for jobs: ``sys.executable``, except inside the Slicer application, where ``sys.executable``
    is the application itself and the Python launcher is ``PythonSlicer`` (on PATH in Slicer, else beside it)."""
    slicer = sys.modules.get("slicer")
    if slicer is None or getattr(slicer, "app", None) is None:
        return sys.executable
    found = shutil.which("PythonSlicer")
    if found:
        return found
    candidate = Path(sys.executable).with_name("PythonSlicer.exe" if os.name == "nt" else "PythonSlicer")
    if candidate.is_file():
        return str(candidate)
    raise RuntimeError("PythonSlicer was not found (on PATH or beside the Slicer executable); reinstall Slicer")


def training_command(subcommand: str, *args: str, python: str | None = None) -> list[str]:
    """``[python or default_python(), "-m", "training", subcommand, *args, "--progress", "json"]``."""
    return [python or default_python(), "-m", "training", subcommand, *[str(a) for a in args], "--progress", "json"]


def job_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a job: this process's, unbuffered, with the folder holding ``training`` and
    ``MedDINOv3Core`` first on PYTHONPATH (in Slicer they ship inside the module folder, which PythonSlicer does not
    search by itself), plus ``extra``."""
    import MedDINOv3Core

    env = dict(os.environ)
    root = str(Path(MedDINOv3Core.__file__).resolve().parent.parent)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([root, *[p for p in paths if p != root]])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONIOENCODING", "utf-8")
    if extra:
        env.update({str(k): str(v) for k, v in extra.items()})
    return env


def _error_message(stderr_lines: Sequence[str], returncode: int | None) -> str:
    lines = [line.strip() for line in stderr_lines if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:"):
            return line[len("error:") :].strip()
    if lines:
        return lines[-1]
    return f"the job exited with status {returncode} and no message"


class Job:
    """One background ``python -m training`` process (see the module docstring).

    Args:
        command: the full command (``training_command(...)``).
        cwd: working directory (default: the current one).
        env: environment (default ``job_environment()``).
        on_finish: ``on_finish(job) -> value`` run by ``result()`` after a successful exit (caller's thread).
    """

    def __init__(
        self,
        command: Sequence[str],
        cwd: str | os.PathLike | None = None,
        env: Mapping[str, str] | None = None,
        on_finish: Callable[[Job], Any] | None = None,
    ) -> None:
        self.command = [str(c) for c in command]
        self.cwd = None if cwd is None else str(cwd)
        self.env = dict(env) if env is not None else job_environment()
        self.on_finish = on_finish
        self.events: list[ProgressEvent] = []  # every event so far
        self.output: list[str] = []  # stdout lines that were not progress events
        self.stderr_lines: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self.returncode: int | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._unread = 0
        self._threads: list[threading.Thread] = []
        self._cancelled = False
        self._finished = False
        self._result: Any = None

    # ------------------------------------------------------------------------------------------------ running

    def start(self) -> Job:
        """Start the process (once) and its reader threads; returns self."""
        if self._process is not None:
            raise RuntimeError("this job was started already; make a new Job to run it again")
        kwargs: dict[str, Any] = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True
        log.info("starting job: %s", " ".join(self.command))
        self.started_at = time.monotonic()
        self._process = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            **kwargs,
        )
        for target, stream in ((self._read_stdout, self._process.stdout), (self._read_stderr, self._process.stderr)):
            thread = threading.Thread(target=target, args=(stream,), daemon=True, name="meddinov3-job-reader")
            thread.start()
            self._threads.append(thread)
        return self

    def _read_stdout(self, stream) -> None:
        for line in stream:
            event = ProgressEvent.from_line(line)
            with self._lock:
                if event is None:
                    if line.strip():
                        self.output.append(line.rstrip("\n"))
                else:
                    self.events.append(event)
                    self._unread += 1
        stream.close()

    def _read_stderr(self, stream) -> None:
        for line in stream:
            self.stderr_lines.append(line.rstrip("\n"))
            log.debug("job stderr: %s", line.rstrip())
        stream.close()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        """True from ``start()`` until the process has exited and its output has been read."""
        if self._process is None:
            return False
        if self._process.poll() is None:
            return True
        if any(t.is_alive() for t in self._threads):
            # the process exited; its pipes drain in a moment (a grandchild holding them is killed by cancel())
            for t in self._threads:
                t.join(timeout=0.05)
            if any(t.is_alive() for t in self._threads):
                return True
        if self.returncode is None:
            self.returncode = self._process.returncode
            self.finished_at = time.monotonic()
            log.info("job finished with status %s in %.1f s", self.returncode, self.finished_at - self.started_at)
        return False

    def poll(self) -> list[ProgressEvent]:
        """The progress events that arrived since the last poll (non-blocking)."""
        with self._lock:
            if not self._unread:
                return []
            new = self.events[-self._unread :]
            self._unread = 0
        return new

    @property
    def last_event(self) -> ProgressEvent | None:
        with self._lock:
            return self.events[-1] if self.events else None

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        """Kill the job's whole process tree (no-op once it has finished). ``result()`` then raises JobCancelled."""
        process = self._process
        if process is None:
            self._cancelled = True
            return
        if process.poll() is not None and not any(t.is_alive() for t in self._threads):
            return
        self._cancelled = True
        log.info("cancelling job (pid %d)", process.pid)
        if os.name == "nt":
            subprocess.run(
                ["taskkill", "/T", "/F", "/PID", str(process.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
        else:
            self._killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
            self._killpg(process.pid, signal.SIGKILL)  # the group's stragglers too
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for t in self._threads:
            t.join(timeout=2)

    @staticmethod
    def _killpg(pgid: int, sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def wait(
        self,
        progress: ProgressCallback | None = None,
        cancel: Any = None,
        poll_interval: float = 0.1,
        timeout: float | None = None,
    ) -> Any:
        """Block until the job ends, forwarding events to ``progress(stage, done, total, message)``; returns result().

        Args:
            progress: optional callback (MedDINOv3Core.progress convention).
            cancel: a CancelToken / threading.Event; when set the job is cancelled (JobCancelled is raised).
            poll_interval: seconds between polls.
            timeout: cancel the job and raise TimeoutError after this many seconds (None: no limit).
        """
        if self._process is None:
            self.start()
        poll_until_done(self, progress, cancel, poll_interval, timeout, "the job did not finish within {} s and was")
        forward_events(self.poll(), progress)
        return self.result()

    def result(self) -> Any:
        """After the job ended: on_finish's value (computed once), or raise JobCancelled / JobError."""
        if self._cancelled:
            raise JobCancelled("cancelled by the user")
        if self._process is None:
            raise RuntimeError("the job was not started")
        if self.running:
            raise RuntimeError("the job is still running; poll until `running` is False, or call wait()")
        if self.returncode != 0:
            stderr = "\n".join(self.stderr_lines)
            raise JobError(_error_message(list(self.stderr_lines), self.returncode), self.returncode, stderr)
        if not self._finished:
            self._result = self.on_finish(self) if self.on_finish is not None else None
            self._finished = True
        return self._result


def forward_events(events, progress: ProgressCallback | None) -> None:
    """Pass each polled event to ``progress(stage, done, total, message)`` (nothing when progress is None)."""
    for event in events:
        if progress is not None:
            progress(event.stage, event.done, event.total, event.message)


def poll_until_done(
    runner, progress: ProgressCallback | None, cancel: Any, poll_interval: float, timeout: float | None, what: str
) -> None:
    """Poll ``runner`` (a Job or JobChain: ``poll``, ``running``, ``cancel``) until it ends, forwarding its events.

    ``cancel`` set: the runner is cancelled and the loop ends; past ``timeout`` seconds: cancelled, then
    TimeoutError(``what`` formatted with the timeout + " cancelled").
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        forward_events(runner.poll(), progress)
        if not runner.running:
            return
        if cancel is not None and cancel.is_set():
            runner.cancel()
            return
        if deadline is not None and time.monotonic() > deadline:
            runner.cancel()
            raise TimeoutError(what.format(timeout) + " cancelled")
        time.sleep(poll_interval)


__all__ = [
    "Job",
    "default_python",
    "forward_events",
    "poll_until_done",
    "JobCancelled",
    "JobError",
    "ProgressEvent",
    "job_environment",
    "training_command",
]
