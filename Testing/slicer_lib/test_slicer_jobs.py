"""Background jobs with real subprocesses: a real predict on the embedded model, a failing job, Cancel."""

from __future__ import annotations

import os
import sys
import textwrap
import time

import pytest

from MedDINOv3Core.data.phantom import make_phantom
from MedDINOv3Core.progress import CancelToken
from MedDINOv3Core.volume_io import read_volume, write_volume
from MedDINOv3SlicerLib.jobs import Job, JobCancelled, JobError, ProgressEvent, training_command


def test_training_command_and_event_parsing():
    cmd = training_command("predict", "--model", "m", python="/x/python")
    assert cmd == ["/x/python", "-m", "training", "predict", "--model", "m", "--progress", "json"]
    assert training_command("models")[0] == sys.executable
    event = ProgressEvent.from_line('{"stage": "done", "done": 3, "total": 4, "message": "ok", "model": "/m"}\n')
    assert (event.stage, event.done, event.total, event.message, event.data) == ("done", 3, 4, "ok", {"model": "/m"})
    assert event.fraction == 0.75
    assert ProgressEvent.from_line("INFO something") is None
    assert ProgressEvent.from_line("{not json") is None


def test_predict_job_on_the_embedded_model(tmp_path):
    phantom = make_phantom((8, 96, 96), seed=5)
    src = write_volume(phantom.ct, tmp_path / "ct.nii.gz")
    out = tmp_path / "seg.nii.gz"
    cmd = training_command(
        "predict", "--model", "meddinov3-phantom-tiny", "--input", str(src), "--output", str(out), "--device", "cpu"
    )
    job = Job(cmd, cwd=tmp_path, on_finish=lambda j: read_volume(out))
    assert not job.running
    seen = []
    labels = job.wait(progress=lambda stage, done, total, message: seen.append((stage, done, total)))
    assert job.returncode == 0 and not job.running
    assert ("predict", 8, 8) in seen and seen[-1][0] == "write"
    assert [(e.stage, e.done, e.total) for e in job.events] == seen
    assert job.poll() == []  # all delivered
    assert labels.same_geometry(phantom.ct, tol=1e-4) and labels.array.max() > 0
    assert job.result() is labels  # on_finish runs once


def test_poll_is_non_blocking(tmp_path):
    script = "import json, time\nfor i in range(3):\n    print(json.dumps({'stage': 's', 'done': i, 'total': 3}))\n"
    script += "    time.sleep(0.2)\n"
    job = Job([sys.executable, "-u", "-c", script]).start()
    t0 = time.monotonic()
    assert isinstance(job.poll(), list)
    assert time.monotonic() - t0 < 0.05
    events = []
    while job.running:
        events += job.poll()
        time.sleep(0.02)
    events += job.poll()
    assert [e.done for e in events] == [0, 1, 2]
    assert job.result() is None


def test_failing_job_raises_the_cli_message(tmp_path):
    phantom = make_phantom((4, 32, 32), seed=1)
    src = write_volume(phantom.ct, tmp_path / "ct.nii.gz")
    cmd = training_command(
        "predict", "--model", "no-such-model", "--input", str(src), "--output", str(tmp_path / "o.nii")
    )
    job = Job(cmd, on_finish=lambda j: pytest.fail("on_finish must not run for a failed job"))
    with pytest.raises(JobError, match="unknown model 'no-such-model'") as info:
        job.wait()
    assert info.value.returncode == 1
    assert "\n" not in str(info.value)
    # bad usage: exit status 2, argparse's message
    usage = Job(training_command("predict", "--model", "x")).start()
    with pytest.raises(JobError) as info:
        usage.wait()
    assert info.value.returncode == 2 and "--input" in str(info.value)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) counts as dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@pytest.mark.skipif(os.name == "nt", reason="POSIX process tree check")
def test_cancel_kills_the_process_tree(tmp_path):
    """A job whose process started a child: cancel() kills both, quickly, and result() raises JobCancelled."""
    pid_file = tmp_path / "child.pid"
    script = textwrap.dedent(
        f"""
        import json, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        print(json.dumps({{"stage": "work", "done": 0, "total": 100}}), flush=True)
        time.sleep(120)
        """
    )
    job = Job([sys.executable, "-u", "-c", script]).start()
    deadline = time.monotonic() + 20
    while not job.events and time.monotonic() < deadline:
        job.poll()
        time.sleep(0.05)
    assert job.events, "the job never reported progress"
    child = int(pid_file.read_text())
    assert _alive(child)
    t0 = time.monotonic()
    job.cancel()
    assert time.monotonic() - t0 < 5
    assert not job.running and job.cancelled
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the job's child process survived cancel()"
    with pytest.raises(JobCancelled):
        job.result()


def test_cancel_token_stops_a_real_training_job(tmp_path):
    """wait(cancel=token) cancels a running `python -m training predict` as soon as the token is set."""
    phantom = make_phantom((24, 128, 128), seed=2)
    src = write_volume(phantom.ct, tmp_path / "ct.nii.gz")
    out = tmp_path / "seg.nii.gz"
    cmd = training_command("predict", "--model", "meddinov3-phantom-tiny", "--input", str(src), "--output", str(out))
    token = CancelToken()

    def progress(stage, done, total, message):
        token.set()  # cancel at the first progress line

    t0 = time.monotonic()
    with pytest.raises(JobCancelled):
        Job(cmd).wait(progress=progress, cancel=token)
    assert time.monotonic() - t0 < 30
    assert not out.exists()
