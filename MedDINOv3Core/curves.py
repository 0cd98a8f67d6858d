"""Training-curve PNGs written beside a run's ``history.json`` (finetune) or ``metrics.jsonl`` (pretrain).

The plot is drawn straight into a numpy RGB image (no plotting library): one panel per series (loss, and the
validation DSC when there is one), each with a frame, horizontal grid lines, its y range and x range written in a
small built-in bitmap font, and the series as a line with a dot per point. The PNG is written by
``MedDINOv3Core.preview.write_png`` (atomically). Writing a curve never fails a training run: errors are logged.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from MedDINOv3Core.preview import write_png

log = logging.getLogger(__name__)

CURVE_SIZE = (400, 640)  # (height, width) of every curve PNG
FINETUNE_CURVE_NAME = "history.png"
PRETRAIN_CURVE_NAME = "metrics.png"

# A 3 x 5 bitmap font (rows top -> bottom, '1' = ink) for the axis labels and titles.
_FONT = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001010010",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "-": "000000111000000",
    "+": "000010111010000", " ": "000000000000000", "(": "001010010010001", ")": "100010010010100",
    "A": "010101111101101", "C": "011100100100011", "D": "110101101101110", "E": "111100110100111",
    "H": "101101111101101", "L": "100100100100111", "O": "111101101101111", "P": "110101110100100",
    "S": "011100010001110", "T": "111010010010010", "V": "101101101101010", "I": "111010010010111",
    "N": "110101101101101", "R": "110101110101101", "G": "011100101101011", "M": "101111111101101",
    "U": "101101101101111", "X": "101101010101101", "F": "111100110100100", "B": "110101110101110",
    "K": "101101110101101", "W": "101101111111101", "Y": "101101010010010", "Z": "111001010100111",
    "J": "001001001101010", "Q": "010101101110011",
}  # fmt: skip
_COLORS = {"loss": (31, 119, 180), "val_dsc": (214, 39, 40), "frame": (60, 60, 60), "grid": (225, 225, 225)}


def _text(img: np.ndarray, row: int, col: int, text: str, color=(0, 0, 0), scale: int = 2) -> None:
    """Draw ``text`` (upper-cased; unknown characters as blanks) with its top-left corner at (row, col)."""
    for i, ch in enumerate(text.upper()):
        glyph = np.array([c == "1" for c in _FONT.get(ch, _FONT[" "])]).reshape(5, 3)
        glyph = np.kron(glyph, np.ones((scale, scale), dtype=bool))
        r0, c0 = row, col + i * 4 * scale
        h, w = glyph.shape
        if r0 < 0 or c0 < 0 or r0 + h > img.shape[0] or c0 + w > img.shape[1]:
            continue
        img[r0 : r0 + h, c0 : c0 + w][glyph] = color


def _line(img: np.ndarray, r0: float, c0: float, r1: float, c1: float, color, width: int = 2) -> None:
    n = int(max(abs(r1 - r0), abs(c1 - c0))) + 1
    rows = np.rint(np.linspace(r0, r1, n)).astype(int)
    cols = np.rint(np.linspace(c0, c1, n)).astype(int)
    for dr in range(width):
        for dc in range(width):
            rr = np.clip(rows + dr - width // 2, 0, img.shape[0] - 1)
            cc = np.clip(cols + dc - width // 2, 0, img.shape[1] - 1)
            img[rr, cc] = color


def _fmt(v: float) -> str:
    if v == 0 or 1e-3 <= abs(v) < 1e4:
        return f"{v:.4g}"
    return f"{v:.2e}"


def _panel(img: np.ndarray, top: int, bottom: int, x: Sequence[float], y: Sequence[float], title: str, color,
           x_name: str, y_range: tuple[float, float] | None = None) -> None:  # fmt: skip
    """One framed panel spanning rows [top, bottom) of ``img``: the series (x, y), finite points only."""
    left, right = 70, img.shape[1] - 20
    t, b = top + 22, bottom - 28
    _text(img, top + 4, left, title, color)
    pts = [(float(a), float(v)) for a, v in zip(x, y) if v is not None and math.isfinite(float(v))]
    lo, hi = y_range or ((min(v for _, v in pts), max(v for _, v in pts)) if pts else (0.0, 1.0))
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5 * max(abs(lo), 1e-3), hi + 0.5 * max(abs(hi), 1e-3)
    xs = [a for a, _ in pts] or [0.0, 1.0]
    x0, x1 = min(xs), max(xs)
    if x1 - x0 < 1e-12:
        x0, x1 = x0 - 1, x1 + 1
    for k in range(5):
        r = int(round(t + (b - t) * k / 4))
        img[r, left:right] = _COLORS["grid"]
        _text(img, r - 5, 4, _fmt(hi - (hi - lo) * k / 4)[:8], _COLORS["frame"], scale=1)
    img[t:b, left] = img[t:b, right - 1] = _COLORS["frame"]
    img[t, left:right] = img[b - 1, left:right] = _COLORS["frame"]
    _text(img, b + 6, left, _fmt(x0), _COLORS["frame"])
    label = f"{x_name} {_fmt(x1)}"
    _text(img, b + 6, right - len(label) * 8, label, _COLORS["frame"])

    def to_px(a: float, v: float) -> tuple[float, float]:
        return b - 1 - (v - lo) / (hi - lo) * (b - 1 - t), left + (a - x0) / (x1 - x0) * (right - 1 - left)

    px = [to_px(a, v) for a, v in pts]
    for (r0, c0), (r1, c1) in zip(px, px[1:]):
        _line(img, r0, c0, r1, c1, color)
    if len(px) <= 100:
        for r, c in px:
            _line(img, r - 1, c - 1, r + 1, c + 1, color, width=3)


def plot_curves(
    series: dict[str, tuple[Sequence[float], Sequence[float], tuple[float, float] | None]],
    x_name: str,
    size: tuple[int, int] = CURVE_SIZE,
) -> np.ndarray:
    """An (H, W, 3) uint8 image with one panel per series: name -> (x, y, fixed y range or None)."""
    img = np.full((*size, 3), 255, dtype=np.uint8)
    n = max(1, len(series))
    for i, (name, (x, y, y_range)) in enumerate(series.items()):
        top, bottom = size[0] * i // n, size[0] * (i + 1) // n
        color = _COLORS.get(name.lower().replace(" ", "_"), _COLORS["loss"])
        _panel(img, top, bottom, x, y, name, color, x_name, y_range)
    return img


def finetune_curve(history: Sequence[dict], size: tuple[int, int] = CURVE_SIZE) -> np.ndarray:
    """Loss (and validation DSC, on a fixed 0..1 axis, when validated) per epoch of a finetune ``history.json``."""
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    series = {"loss": (epochs, [h.get("loss") for h in history], None)}
    if any("val_dsc" in h for h in history):
        series["val DSC"] = (epochs, [h.get("val_dsc") for h in history], (0.0, 1.0))
    return plot_curves(series, "epoch", size)


def pretrain_curve(records: Sequence[dict], size: tuple[int, int] = CURVE_SIZE) -> np.ndarray:
    """The total loss per logged step of a pretraining ``metrics.jsonl`` (steps counted from 1)."""
    steps = [r["step"] + 1 for r in records if "step" in r]
    return plot_curves({"loss": (steps, [r.get("total") for r in records if "step" in r], None)}, "step", size)


def write_finetune_curve(history: Sequence[dict], path: str | os.PathLike) -> Path | None:
    """Write ``finetune_curve(history)`` as a PNG (atomically); None (logged) when it could not be written."""
    try:
        return write_png(path, finetune_curve(history))
    except Exception as exc:  # noqa: BLE001 - a plot must never end a training run
        log.warning("could not write the training curve %s: %s", path, exc)
        return None


def write_pretrain_curve(metrics_jsonl: str | os.PathLike, path: str | os.PathLike | None = None) -> Path | None:
    """Plot a ``metrics.jsonl`` into ``metrics.png`` beside it (or ``path``); None (logged) when not possible."""
    metrics_jsonl = Path(metrics_jsonl)
    path = Path(path) if path is not None else metrics_jsonl.with_name(PRETRAIN_CURVE_NAME)
    try:
        records = [json.loads(line) for line in metrics_jsonl.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not records:
            return None
        return write_png(path, pretrain_curve(records))
    except Exception as exc:  # noqa: BLE001 - a plot must never end a training run
        log.warning("could not write the training curve %s: %s", path, exc)
        return None


__all__ = [
    "CURVE_SIZE",
    "FINETUNE_CURVE_NAME",
    "PRETRAIN_CURVE_NAME",
    "finetune_curve",
    "plot_curves",
    "pretrain_curve",
    "write_finetune_curve",
    "write_pretrain_curve",
]
