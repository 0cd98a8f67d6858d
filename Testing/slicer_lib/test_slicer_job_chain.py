"""JobChain: steps run one after the other behind the Job interface; events say which step runs."""

from __future__ import annotations

import json
import sys

import pytest

from MedDINOv3SlicerLib.job_chain import JobChain
from MedDINOv3SlicerLib.jobs import Job, JobCancelled, JobError


def _job(*lines: dict, code: str = "", on_finish=None) -> Job:
    prints = "".join(f"print({json.dumps(json.dumps(line))}, flush=True);" for line in lines)
    return Job([sys.executable, "-c", prints + code], on_finish=on_finish)


def test_steps_run_in_order_pass_results_on_and_rename_their_events():
    seen = []

    def first(previous):
        seen.append(previous)
        return _job({"stage": "features", "done": 2, "total": 2}, on_finish=lambda job: "cache")

    def skipped(previous):
        seen.append(previous)
        return None  # nothing to do: the previous result passes on

    def last(previous):
        seen.append(previous)
        return _job({"stage": "predict", "done": 1, "total": 3, "message": "slices"}, on_finish=lambda job: 42)

    chain = JobChain([("features", first), ("cached", skipped), ("predicting", last)], initial="start")
    stages = []
    assert chain.wait(progress=lambda stage, done, total, message: stages.append((stage, done, total, message))) == 42
    assert seen == ["start", "cache", "cache"]
    assert ("features", 2, 2, "features") in stages and ("predicting", 1, 3, "predict slices") in stages
    assert ("cached", 1, 1, "ready (cached)") in stages
    assert [s[0] for s in stages if s[3] == "starting"] == ["features", "predicting"]
    assert set(chain.jobs) == {"features", "predicting"} and chain.results["cached"] == "cache"


def test_a_failed_step_stops_the_chain_with_its_message():
    started = []
    chain = JobChain(
        [
            (
                "features",
                lambda _: _job(code="import sys; print('error: no such model', file=sys.stderr); sys.exit(2)"),
            ),
            ("training", lambda _: started.append(1)),
        ]
    )
    with pytest.raises(JobError, match="no such model"):
        chain.wait()
    assert not started and not chain.running


def test_a_step_that_cannot_start_is_reported():
    def broken(_):
        raise ValueError("paint a few slices first")

    with pytest.raises(ValueError, match="paint a few slices"):
        JobChain([("training", broken)]).wait()


def test_cancel_kills_the_running_step_and_starts_no_other():
    started = []
    chain = JobChain(
        [("features", lambda _: _job(code="import time; time.sleep(30)")), ("training", lambda _: started.append(1))]
    ).start()
    assert chain.running and chain.step == "features"
    chain.cancel()
    assert not chain.running and not started
    with pytest.raises(JobCancelled):
        chain.result()
