"""The offline demo: the whole product on one CT in a few minutes, with pictures.

Generates a synthetic CT phantom (or reads the user's CT), segments it with a model card (the embedded default,
trained by this project's own finetuning on phantoms), scores it against the phantom's truth, builds the PCA feature
map and the similarity map of a click in one organ, exports a DICOM RT Structure Set, and writes PNG previews plus a
one-page summary. Every step is a MedDINOv3Core call; this module only orchestrates and writes files.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from MedDINOv3Core import preview
from MedDINOv3Core.atomic import write_json, write_text
from MedDINOv3Core.data.volume import Volume

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "meddinov3-phantom-tiny"  # the embedded model, Resources/models/<name> (and a registry entry)
DEMO_SHAPE = (48, 192, 192)
DEMO_SEED = 2026  # not one of the training seeds recorded in the embedded card
# Everything run_demo writes into its folder (what --overwrite may replace), and the entries that show a folder holds
# a demo output.
DEMO_OUTPUTS = (
    *(f"{name}.nii.gz" for name in ("ct", "truth", "segmentation", "similarity")),
    *(f"{name}.png" for name in ("slice", "segmentation", "pca", "similarity", "truth", "overview")),
    "features",
    "dicom",
    "summary.md",
    "summary.json",
)
DEMO_MARKERS = ("summary.json", "features")


@dataclass
class DemoResult:
    out: Path
    files: dict[str, Path] = field(default_factory=dict)
    dice: dict[str, float] = field(default_factory=dict)
    mean_dice: float | None = None
    reference_dice: float | None = None
    click: dict[str, Any] = field(default_factory=dict)
    similarity: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    rtstruct_validation: str = "not run"
    warnings: list[str] = field(default_factory=list)


def choose_click(labels: np.ndarray | None, body: np.ndarray, organ_value: int | None) -> tuple[np.ndarray, str]:
    """The voxel (z, y, x) to click: in the slice showing the organ with the most other structures (the most
    telling preview), the organ's deepest interior point; without the organ, the body centre."""
    from scipy import ndimage

    if labels is not None and organ_value is not None and (labels == organ_value).any():
        mask = labels == organ_value
        slices = np.flatnonzero(mask.any(axis=(1, 2)))
        z = max(slices, key=lambda k: (len(np.unique(labels[k])), mask[k].sum()))
        depth = ndimage.distance_transform_edt(mask[z])
        r, c = np.unravel_index(np.argmax(depth), depth.shape)
        return np.array([z, r, c]), "organ"
    return np.round(np.argwhere(body).mean(axis=0)).astype(int), "body centre"


def _validate_rtstruct(path: Path) -> str:
    tool = shutil.which("dciodvfy")
    if tool is None:
        return "dciodvfy not installed (apt-get install dicom3tools to validate)"
    proc = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]
    return "dciodvfy: no errors" if not errors else f"dciodvfy: {len(errors)} errors, first: {errors[0]}"


def check_organ(organ: str, card) -> str:
    """The model's spelling of ``organ`` (case-insensitive); a UsageError listing the model's structures when the
    model does not know it."""
    from training.common import UsageError

    names = [str(lab["name"]) for lab in card.labels if int(lab["value"]) != 0]
    match = next((n for n in names if n.lower() == organ.strip().lower()), None)
    if match is None:
        raise UsageError(f"--organ {organ!r}: the model knows no such structure; choose one of {', '.join(names)}")
    return match


def default_model() -> Path:
    """The embedded demo model's folder (in the checkout's or the installed package's Resources)."""
    from MedDINOv3Core.resource_files import resource_path

    return resource_path("models", DEFAULT_MODEL_NAME)


def run_demo(
    out: str | Path,
    *,
    model: str | Path | None = None,
    input_path: str | Path | None = None,
    shape: tuple[int, int, int] = DEMO_SHAPE,
    seed: int = DEMO_SEED,
    device: str = "auto",
    organ: str = "liver",
    progress=None,
) -> DemoResult:
    """Run every step of the demo into ``out``; returns what was measured and written."""
    from MedDINOv3Core.card import load_model_card
    from MedDINOv3Core.hub import resolve_model
    from MedDINOv3Core.volume_io import read_volume

    card_dir = resolve_model(str(model or default_model()))
    organ = check_organ(organ, load_model_card(card_dir))
    out = Path(out).expanduser()
    ct = read_volume(input_path) if input_path is not None else None  # a refused input leaves no output folder
    out.mkdir(parents=True, exist_ok=True)
    result = DemoResult(out)
    step = _stepper(result, progress)
    ct, truth = _demo_input(result, ct, shape, seed)
    step("input", 1)
    net, card = _load_segmentation_model(card_dir, model)
    seg, warning = _segment(result, net, card, ct, truth, input_path, device, progress)
    step("segment", 2)
    explored = _explore(result, net, card, ct, truth, seg, warning, organ, device, progress)
    step("explore", 3)
    _export_rtstruct(result, card, ct, seg)
    step("rtstruct", 4)
    _write_previews(result, card, ct, seg, truth, explored)
    step("previews", 5)
    result.files["summary"] = write_summary(result, card, ct, input_path)
    step("summary", 6)
    return result


class _Explored(NamedTuple):
    """What the explore step computed for the previews: the click (z, y, x), its similarity map, the PCA map."""

    click: np.ndarray
    similarity: np.ndarray
    pca: np.ndarray
    body: np.ndarray


def _stepper(result: DemoResult, progress):
    """``step(name, n)``: records the seconds since the previous step in ``result.timings`` and reports progress."""
    last = [time.perf_counter()]

    def step(name: str, n: int) -> None:
        now = time.perf_counter()
        result.timings[name] = round(now - last[0], 2)
        last[0] = now
        if progress is not None:
            progress("demo", n, 6, name)

    return step


def _labels(card) -> dict[int, dict]:
    return {int(lab["value"]): lab for lab in card.labels}


def _demo_input(result: DemoResult, ct: Volume | None, shape, seed: int) -> tuple[Volume, Volume | None]:
    """1. The CT: the user's (already read), or a synthetic phantom written with its truth; returns (ct, truth)."""
    from MedDINOv3Core.data.phantom import make_phantom
    from MedDINOv3Core.volume_io import write_volume

    if ct is not None:
        return ct, None
    phantom = make_phantom(shape, seed=seed)
    result.files["ct"] = write_volume(phantom.ct, result.out / "ct.nii.gz")
    result.files["truth"] = write_volume(phantom.labels, result.out / "truth.nii.gz")
    return phantom.ct, phantom.labels


def _load_segmentation_model(card_dir: Path, model):
    from MedDINOv3Core.weights import load_model

    net, card = load_model(card_dir)
    if card.task != "segmentation":
        raise ValueError(f"model {model} is a {card.task} model; the demo needs a segmentation model card")
    return net, card


def _segment(result: DemoResult, net, card, ct: Volume, truth, input_path, device, progress):
    """2. Segment, and score against the phantom's truth; returns (segmentation, the model's domain warning)."""
    from MedDINOv3Core.inference import predict_volume
    from MedDINOv3Core.metrics import dice
    from MedDINOv3Core.volume_io import write_volume
    from MedDINOv3Core.weights import domain_warning

    seg = predict_volume(net, card, ct, device=device, progress=progress).labelmap
    result.files["segmentation"] = write_volume(seg, result.out / "segmentation.nii.gz")
    labels = _labels(card)
    warning = domain_warning(card, input_path) if input_path is not None else None
    result.warnings += [warning] if warning else []
    if truth is not None:
        scores = dice(seg.array, truth.array, sorted(labels))
        result.dice = {labels[v]["name"]: round(float(s), 4) for v, s in scores.items() if np.isfinite(s)}
        result.mean_dice = round(float(np.mean(list(result.dice.values()))), 4)
        reference = (card.provenance.get("history") or {}).get("val_dsc")
        result.reference_dice = float(reference) if reference is not None else None
    return seg, warning


def _explore(result: DemoResult, net, card, ct: Volume, truth, seg: Volume, warning, organ: str, device, progress):
    """3. Explore: features once, the PCA map, the similarity of a click in one organ."""
    from MedDINOv3Core.explore import body_mask, pca_map, similarity_map
    from MedDINOv3Core.extraction import extract_features
    from MedDINOv3Core.volume_io import write_volume

    out = result.out
    features = extract_features(net, card, ct, cache_dir=out / "features", device=device, progress=progress)
    body = body_mask(ct)
    organ_value = next((v for v, lab in _labels(card).items() if lab["name"] == organ), None)
    # a model's labels name the click only where it knows the data: else the click is the body centre, unnamed
    known = truth.array if truth is not None else (seg.array if warning is None else None)
    click, where = choose_click(known, body, organ_value)
    sim = similarity_map(features, click.astype(float)[::-1], space="ijk", scope="volume")
    pca = pca_map(features, body)
    result.files["similarity"] = write_volume(ct.with_array(sim), out / "similarity.nii.gz")
    result.click = {
        "zyx": click.tolist(),
        "organ": organ if where == "organ" else None,
        "where": where,
        "lps_mm": [round(float(v), 2) for v in ct.index_to_physical(click[::-1])],
    }
    if where == "organ":  # the model knows the structure and the click landed in it
        inside = (truth.array if truth is not None else seg.array) == organ_value
        result.similarity = {
            "inside_organ": round(float(sim[inside].mean()), 4),
            "rest_of_body": round(float(sim[body & ~inside].mean()), 4),
        }
    return _Explored(click, sim, pca, body)


def _export_rtstruct(result: DemoResult, card, ct: Volume, seg: Volume) -> None:
    """4. An RT Structure Set on a DICOM CT series written from the volume, validated when dciodvfy is installed."""
    from MedDINOv3Core.dicom import roi_spec_from_label
    from MedDINOv3Core.dicom.structure_set import export_structure_set

    rois = [roi_spec_from_label(lab) for v, lab in sorted(_labels(card).items()) if (seg.array == v).any()]
    patient = {"PatientName": "Demo^Phantom", "PatientID": "DEMO"}
    rt_path = export_structure_set(seg.array, ct, rois, result.out / "dicom", series_options={"patient": patient}).path
    result.files["rtstruct"] = rt_path
    result.rtstruct_validation = _validate_rtstruct(rt_path)


def _write_previews(result: DemoResult, card, ct: Volume, seg: Volume, truth, explored: _Explored) -> None:
    """5. PNG previews on the clicked axial slice (radiological display: anterior up, patient's right on the left)."""
    from MedDINOv3Core.inference import prepared_for

    out, (click, sim, pca, body) = result.out, explored
    prepared = prepared_for(card, ct)
    axial = prepared.axial_view
    zyx = np.zeros(ct.shape, dtype=bool)
    zyx[tuple(click)] = True
    k, r, c = np.argwhere(axial(zyx))[0]
    gray = preview.window(axial(ct.array)[k])
    colors = {v: lab["color"] for v, lab in _labels(card).items()}
    sy, sx = prepared.spacing[1], prepared.spacing[0]

    def finish(rgb: np.ndarray) -> np.ndarray:
        return preview.upscale(preview.aspect_correct(rgb, sy, sx), 2)

    panels = {
        "slice": preview.gray_to_rgb(gray),
        "segmentation": preview.overlay_labels(gray, axial(seg.array)[k], colors),
        "pca": preview.blend(
            preview.gray_to_rgb(gray), np.moveaxis(axial(np.moveaxis(pca, -1, 0))[:, k], 0, -1), axial(body)[k] * 0.85
        ),
        "similarity": preview.mark(preview.overlay_heatmap(gray, axial(sim)[k], 0.0, 1.0, 0.65, 0.2), r, c),
    }
    if truth is not None:
        panels["truth"] = preview.overlay_labels(gray, axial(truth.array)[k], colors)
    for name, rgb in panels.items():
        result.files[f"{name}_png"] = preview.write_png(out / f"{name}.png", finish(rgb))
    order = ["slice", "segmentation", "pca", "similarity"]
    result.files["overview_png"] = preview.write_png(
        out / "overview.png", preview.montage([finish(panels[n]) for n in order], columns=2)
    )


def write_summary(result: DemoResult, card, ct: Volume, input_path) -> Path:
    """summary.md (one page, pictures + figures) and summary.json (the same figures, for tests and scripts)."""
    lines = [
        "# MedDINOv3 demo",
        "",
        f"Input: {'synthetic CT phantom' if input_path is None else input_path} — {ct.shape[0]} slices of "
        f"{ct.shape[1]} x {ct.shape[2]} voxels, spacing {', '.join(f'{s:g}' for s in ct.spacing)} mm (x, y, z).",
        f"Model: {card.name or 'unnamed'} ({card.backbone.embed_dim}-wide ViT, {card.backbone.depth} blocks) — "
        f"{card.description}",
        "",
        *[f"**Warning:** {w}." for w in result.warnings],
        *([""] if result.warnings else []),
        "![overview](overview.png)",
        "",
        "Top left: the CT slice. Top right: the segmentation. Bottom left: PCA of the patch features (3 components as "
        "RGB, fitted on the body). Bottom right: cosine similarity to the clicked patch (cyan cross).",
        "",
    ]
    if result.dice:
        lines += ["## Segmentation against the phantom's truth", "", "| structure | DSC |", "|---|---|"]
        lines += [f"| {name} | {score:.3f} |" for name, score in result.dice.items()]
        lines += [f"| **mean** | **{result.mean_dice:.3f}** |", ""]
        if result.reference_dice is not None:
            lines += [f"The model card records a validation mean DSC of {result.reference_dice:.3f}.", ""]
    if result.similarity:
        lines += [
            "## Similarity of the click",
            "",
            f"Click at voxel (z, y, x) {tuple(result.click['zyx'])} = LPS {tuple(result.click['lps_mm'])} mm "
            f"({result.click['organ'] or result.click['where']}). "
            f"Mean similarity inside that organ {result.similarity['inside_organ']:.3f}, "
            f"in the rest of the body {result.similarity['rest_of_body']:.3f}.",
            "",
        ]
    lines += [
        "## Files",
        "",
        *[f"- `{p.relative_to(result.out)}`" for k, p in result.files.items() if k != "summary"],
        "",
        f"RT Structure Set: {result.rtstruct_validation}.",
        "",
        "Timings (s): " + ", ".join(f"{k} {v}" for k, v in result.timings.items()),
        "",
    ]
    path = write_text(result.out / "summary.md", "\n".join(lines))
    data = {
        "dice": result.dice,
        "mean_dice": result.mean_dice,
        "reference_dice": result.reference_dice,
        "click": result.click,
        "similarity": result.similarity,
        "warnings": result.warnings,
        "rtstruct_validation": result.rtstruct_validation,
        "timings_s": result.timings,
        "files": {k: str(p.relative_to(result.out)) for k, p in result.files.items()},
    }
    write_json(result.out / "summary.json", data)
    return path
