"""`python -m training bench`: every case at a toy size through the CLI in process; the JSON fields, no timings."""

from __future__ import annotations

import json

import pytest
import torch

from training.bench import all_cases
from training.cli import main

EXPECTED = {
    "backbone",
    "predict",
    "decoder",
    "extract",
    "click",
    "pca",
    "pretrain-step",
    "finetune-step",
    "fewshot-loop",
}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_every_case_runs_at_toy_size_and_reports_the_fields(tmp_path, capsys):
    assert EXPECTED <= set(all_cases())
    out = tmp_path / "bench.json"
    names = sorted(all_cases())
    assert main(["bench", *names, "--toy", "--repeats", "1", "--threads", "1", "--json", str(out)]) == 0
    results = {r["case"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == set(names)
    for name, r in results.items():
        machine = r["machine"]
        assert machine["cpu"] and machine["cores"] >= 1 and machine["torch"] == torch.__version__, name
        assert machine["threads"] == 1 and len(machine["load_average_before"]) == 3, name
        assert r["settings"]["toy"] is True and r["settings"]["repeats"] == 1, name
        assert r["reference"] in r["variants"], name
        for row in r["variants"].values():
            assert len(row["runs_s"]) == 1 and row["median_s"] >= 0 and row["peak_rss_mb"] > 0, name
            assert "cuda_max_allocated_mb" in row and row["ratio_to_reference"] is not None, name
    assert set(results["predict"]["variants"]) == {"plain", "fast"}
    assert results["predict"]["metrics"]["min_dsc_fast_vs_plain"] is not None
    assert results["decoder"]["metrics"]["max_abs_difference"] < 1e-3
    loop = results["fewshot-loop"]
    assert set(loop["variants"]) == {"without_cache", "with_cache"} and loop["reference"] == "without_cache"
    assert loop["metrics"]["agreement_cache_vs_full_model_same_head"] >= 0.995
    assert "predict:" in capsys.readouterr().out


def test_unknown_case_is_a_one_line_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "nonsense", "--toy"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "unknown benchmark case nonsense" in err[-1]


def test_a_model_by_registry_name(capsys):
    """--model takes what predict --model takes: a registry name (was: 'model card directory not found')."""
    argv = ["bench", "predict", "--toy", "--repeats", "1", "--threads", "1", "--model", "meddinov3-phantom-tiny"]
    assert main(argv) == 0
    assert "min_dsc_fast_vs_plain" in capsys.readouterr().out
