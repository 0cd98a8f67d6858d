"""Documentation that runs: every command of README.md (fenced bash blocks and inline `python -m training ...` spans)
and every example of every subcommand's --help epilog runs, in process through training.cli.main, on small generated
inputs in place of the placeholders (ct.nii.gz, ct_dicom/, Dataset001_X/, /data/ct, models/abdomen, ...), with tiny
overrides appended so nothing trains for long. Commands that need the Hub, a GPU or torchrun are listed in SKIPPED with
the reason; the test asserts that exactly those were skipped. README's Python API snippet runs from outside the
checkout."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training.cli import build_parser, main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data_fetch import write_synthetic_ct  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PREFIXES = ("python -m training ", ".venv/bin/python -m training ", "meddinov3 ")  # meddinov3: the console script

HUB = "needs the Hugging Face Hub (a download)"
PROSE = "a reference in prose, not a command to run"
SKIPPED = {
    "python -m training ...": PROSE,
    "python -m training predict": PROSE,
    "python -m training predict --model OUT/best --input ct.nii.gz ...": PROSE,
    "bash .ci/setup": "sets up the virtualenv (a few minutes, network)",
    ".venv/bin/python -m pytest": "the whole test suite",
    "torchrun --nproc-per-node 8 -m training pretrain --config stage1 data=/data/ct "
    "output_dir=runs/s1": "torchrun, 8 GPUs",
    "torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m training pretrain "
    "--config stage1 data=/data/ct output_dir=runs/s1 fsdp=true": "torchrun, 4 nodes",
    "torchrun --nproc-per-node 8 -m training pretrain --config stage1 data=/data/ct batch_size=512": "torchrun, 8 GPUs",
    "torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m training pretrain "
    "--config stage1 data=/data/ct fsdp=true backbone=vit_large": "torchrun, 4 nodes",
    "python -m training finetune --config finetune --data Dataset001_X/ --out models/x init=meddinov3-vitb16-ct3m": HUB,
    "python -m training finetune --config finetune --data /data/nnUNet_raw/Dataset218_AMOS2022 --out runs/amos "
    "--init meddinov3-vitb16-ct3m": HUB,
    "python -m training finetune --config finetune_decoder --data /data/Dataset218_AMOS2022 --out runs/amos-dec "
    "--init dinov3_vitb16_pretrain_lvd1689m.pth": "needs the upstream DINOv3 checkpoint file (a gated download)",
    "python -m training pretrain --config stage1 data=[/data/ct_a,/data/ct_b] init_from=dinov3_vitb16.pth": "needs the "
    "upstream DINOv3 checkpoint file (a gated download)",
    "python -m training download meddinov3-vitb16-ct3m": HUB,
    "python -m training download meddinov3-vitb16-ct3m --revision COMMIT": HUB,
    "python -m training download dinov3-vitb16-lvd1689m --token hf_...": HUB,
    "python -m training download ricklisz123/MedDINOv3-ViTB-16-CT-3M --revision main --cache-dir /data/hf-cache": HUB,
    "HF_HUB_OFFLINE=1 python -m training download meddinov3-vitb16-ct3m": "needs a cached Hub download",
}

# placeholders -> generated inputs (relative to the workspace); values of input options and key=value inputs only
INPUTS = {
    "ct.nii.gz": "ct.nii.gz",
    "ct.nrrd": "ct.nrrd",
    "ct.mha": "ct.mha",
    "seg.nii.gz": "given/seg.nii.gz",  # in a folder of its own: examples also write a seg.nii.gz
    "seg_1_2_4.nii.gz": "seg_1_2_4.nii.gz",  # a label map holding only the values 1, 2 and 4
    "ct_dicom/": "ct_dicom",
    "dicom/CT_series/": "ct_dicom",
    "models/abdomen": "card",
    "models/liver-seg": "card",
    "models/my-backbone": "card",
    "runs/amos-vitb": "card",
    "runs/backbone": "card",
    "dataset.json": "ds/dataset.json",
    "Dataset001_X/": "ds",
    "/data/nnUNet_raw/Dataset218_AMOS2022": "ds",
    "/data/Dataset218_AMOS2022": "ds",
    "painted/": "ds",
    "painted/imagesTr/case_0000.nii.gz": "ds/imagesTr/phantom_000_0000.nii.gz",  # the painted volume itself
    "phantom/": "ds",
    "D": "ds",
    "imagesTs/": "ds/imagesTs",
    "preds/": "preds",
    "labelsTs/": "ds/labelsTs",  # nnU-Net layout: dataset.json beside labelsTs/
    "pred": "preds",
    "gt": "ds/labelsTs",
    "runs/pred": "preds",
    "data/labelsTs": "ds/labelsTs",
    "/data/ct": "ctdir",
    "/data/ct_a": "ctdir",
    "/data/ct_b": "ctdir",
    "/data/hf-cache": "hfcache",
    "runs/s1/checkpoints/last.pt": "ckpt/checkpoints/last.pt",  # made by the (skipped) torchrun stage 1
    "runs/stage1/checkpoints/last.pt": "ckpt/checkpoints/last.pt",  # made by the (skipped) stage 1 example
    "runs/s3/checkpoints/last.pt": "ckpt/checkpoints/last.pt",  # made by a full stage 3 run
    "runs/stage3/checkpoints/last.pt": "ckpt/checkpoints/last.pt",
}
# the export-backbone examples' checkpoints, made by pretraining runs of their own
CHECKPOINTS = {"runs/stage3/checkpoints/last.pt", "runs/tiny/checkpoints/last.pt", "runs/s3/checkpoints/last.pt"}
INPUT_OPTIONS = {"--model", "--input", "--reference", "--labels", "--pred", "--gt", "--data", "--init", "--cache-dir"}
INPUT_KEYS = {"data", "init_from", "init", "gram_teacher"}
TINY_PRETRAIN = [
    "backbone=vit_tiny",
    "total_steps=1",
    "batch_size=2",
    "n_local=1",
    "slice_size=32",
    "global_sizes=[32]",
    "local_sizes=[16]",
    "head_out_dim=32",
    "head_hidden_dim=32",
    "head_bottleneck_dim=16",
    "device=cpu",
    "amp=false",
]
FAST = {  # appended to make each command tiny (argparse and key=value overrides: the last one wins)
    "demo": ["--shape", "16", "64", "64", "--device", "cpu"],
    "predict": ["--device", "cpu"],
    "explore": ["--device", "cpu"],
    "phantom": ["--cases", "1", "--shape", "16", "48", "48"],
    "finetune": ["epochs=1", "iterations_per_epoch=1", "batch_size=2", "crop_size=[32,32]", "device=cpu"],
    "pretrain": TINY_PRETRAIN,
}
FINETUNE_FROM_RANDOM = ["backbone=vit_tiny", "backbone_patch_size=8"]


def _join_continuations(text: str) -> list[str]:
    out, current = [], ""
    for line in text.splitlines():
        current += line.strip()
        if current.endswith("\\"):
            current = current[:-1].rstrip() + " "
            continue
        if current:
            out.append(current)
        current = ""
    return out


def _strip_note(line: str) -> str:
    """Drop a trailing ``# comment`` or ``(note)`` written after two spaces."""
    return re.sub(r"\s{2,}(#.*|\(.*\))$", "", line).strip()


def readme_commands(text: str) -> tuple[list[str], list[str]]:
    """(shell commands, python snippets) of README.md."""
    commands, snippets = [], []
    for lang, body in re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S):
        if lang == "python":
            snippets.append(body)
        elif lang == "bash":
            for line in _join_continuations(body):
                commands += [part.strip() for part in _strip_note(line).split("&&")]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`([^`]+)`", prose):
        span = " ".join(span.split())
        if span.startswith(PREFIXES):
            commands.append(span)
    return commands, snippets


def epilog_commands() -> list[tuple[str, str]]:
    """(subcommand, command line) of every example of every subcommand's --help."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    out = []
    for name, p in sub.choices.items():
        for line in _join_continuations(p.epilog or ""):
            line = _strip_note(line)
            if line.startswith("torchrun"):
                out.append((name, line))
            elif m := re.search(r"(?:^|Then: )((?:[A-Z_]+=\S+ )*python -m training .*)", line):  # also "Then: ..."
                out.append((name, m.group(1)))
    return out


def _map_value(value: str) -> str:
    if value.startswith("[") and value.endswith("]"):
        return "[" + ",".join(INPUTS.get(v, v) for v in value[1:-1].split(",")) + "]"
    return INPUTS.get(value, value)


def to_argv(command: str) -> list[str]:
    """A documented command -> argv for training.cli.main with the inputs mapped and the tiny settings appended."""
    for prefix in PREFIXES:
        if command.startswith(prefix):
            command = command[len(prefix) :]
    tokens = shlex.split(command)
    argv, previous = [], None
    for token in tokens:
        if tokens[0] == "export-backbone" and token in CHECKPOINTS:
            token = "ckpt/checkpoints/last.pt"
        elif previous in INPUT_OPTIONS:
            token = _map_value(token)
        elif "=" in token and not token.startswith("-") and token.split("=", 1)[0] in INPUT_KEYS:
            key, value = token.split("=", 1)
            token = f"{key}={_map_value(value)}"
        argv.append(token)
        previous = token
    name = argv[0]
    extra = list(FAST.get(name, []))
    if name == "finetune" and ("--init" not in argv or argv[argv.index("--init") + 1] == "random"):
        extra += FINETUNE_FROM_RANDOM
    # key=value overrides go right after the command's own (one positional list; the last one of a key wins)
    positional = [i for i, t in enumerate(argv) if "=" in t and not t.startswith("-")]
    at = positional[-1] + 1 if positional and extra and "=" in extra[0] else len(argv)
    return argv[:at] + extra + argv[at:]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The generated inputs every workspace links to."""
    from MedDINOv3Core.data.phantom import make_phantom
    from MedDINOv3Core.dicom import write_series
    from MedDINOv3Core.volume_io import write_volume
    from training.commands.phantom import write_phantom_dataset
    from training.demo import default_model

    base = tmp_path_factory.mktemp("inputs")
    phantom = make_phantom((16, 64, 64), seed=3)
    for suffix in (".nii.gz", ".nrrd", ".mha"):
        write_volume(phantom.ct, base / f"ct{suffix}")
    write_volume(phantom.labels, base / "given" / "seg.nii.gz")
    only = phantom.labels.array * np.isin(phantom.labels.array, (1, 2, 4))
    write_volume(phantom.labels.with_array(only.astype(phantom.labels.array.dtype)), base / "seg_1_2_4.nii.gz")
    write_series(phantom.ct, base / "ct_dicom")
    write_phantom_dataset(base / "ds", cases=2, shape=(8, 48, 48), test=1)
    shutil.copytree(base / "ds" / "labelsTs", base / "preds")  # perfect predictions of the test case
    shutil.copytree(default_model(), base / "card")
    write_synthetic_ct(base / "ctdir", n_volumes=1)
    (base / "hfcache").mkdir()
    torch.set_num_threads(1)
    argv = ["pretrain", "--config", "tiny_cpu", "data=" + str(base / "ctdir"), f"output_dir={base / 'ckpt'}"]
    assert main([*argv, *TINY_PRETRAIN, "--progress", "none"]) == 0
    return base


def _workspace(inputs: Path, tmp_path: Path, name: str) -> Path:
    ws = tmp_path / name
    ws.mkdir()
    for entry in inputs.iterdir():
        (ws / entry.name).symlink_to(entry)
    return ws


def _run_all(commands: list[str], ws: Path, monkeypatch, capsys) -> tuple[list[str], list[str]]:
    """Runs every command in ``ws``; returns (failures, skipped)."""
    monkeypatch.chdir(ws)
    failures, skipped, seen = [], [], set()
    for command in commands:
        if command in SKIPPED:
            skipped.append(command)
            continue
        if not command.startswith(PREFIXES):
            failures.append(f"{command}\n    -> not a `python -m training` command and not in SKIPPED")
            continue
        argv = to_argv(command)
        if tuple(argv) in seen:  # a command shown twice (python -m or .venv/bin/python -m) runs once
            continue
        seen.add(tuple(argv))
        if "--resume" in argv and "--out" in argv and not Path(argv[argv.index("--out") + 1]).exists():
            # the run it continues: made by an earlier (possibly skipped) example, here the command without --resume
            assert main([a for a in argv if a != "--resume"]) == 0, command
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
        err = capsys.readouterr().err.strip().splitlines()
        if rc != 0:
            failures.append(f"{command}\n    ran as: {shlex.join(argv)}\n    exit {rc}: {err[-1] if err else ''}")
    return failures, skipped


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_readme_commands_run(inputs, tmp_path, monkeypatch, capsys):
    commands, _ = readme_commands((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(commands) >= 10, commands
    failures, skipped = _run_all(commands, _workspace(inputs, tmp_path, "readme"), monkeypatch, capsys)
    assert not failures, "README commands that fail as written:\n" + "\n".join(failures)
    expected = {c for c in SKIPPED if c in commands}
    assert set(skipped) == expected


def test_help_examples_run(inputs, tmp_path, monkeypatch, capsys):
    examples = epilog_commands()
    names = {name for name, _ in examples}
    parser_names = set(next(a for a in build_parser()._actions if a.dest == "command").choices)
    assert names == parser_names, f"commands without examples: {parser_names - names}"
    failures, skipped = [], []
    for name in sorted(names):  # one workspace per command: its examples may build on each other
        ws = _workspace(inputs, tmp_path, name)
        f, s = _run_all([c for n, c in examples if n == name], ws, monkeypatch, capsys)
        failures += [f"[{name} --help] {x}" for x in f]
        skipped += s
    assert not failures, "--help examples that fail as written:\n" + "\n".join(failures)
    readme, _ = readme_commands((ROOT / "README.md").read_text(encoding="utf-8"))
    # every SKIPPED entry is skipped by one of the two sources, and nothing else is
    assert set(skipped) | {c for c in SKIPPED if c in readme} == set(SKIPPED)


def test_readme_python_snippet_runs_outside_the_checkout(inputs, tmp_path, monkeypatch):
    _, snippets = readme_commands((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(snippets) == 1
    ws = _workspace(inputs, tmp_path, "api")
    monkeypatch.chdir(ws)
    exec(compile(snippets[0], "README.md (Python API)", "exec"), {})
    from MedDINOv3Core.volume_io import read_volume

    seg, ct = read_volume(ws / "seg.nii.gz"), read_volume(ws / "ct.nii.gz")
    assert seg.same_geometry(ct, tol=1e-5)
    assert json.loads((ROOT / "Resources" / "models.json").read_text(encoding="utf-8"))
