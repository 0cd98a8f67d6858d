"""The ROIs of an RT Structure Set: RoiSpec (name, colour, interpreted type, coded meaning), the RT ROI Interpreted
Types, the default palette, and the coded-concept items (MedDINOv3Core.dicom.rtstruct writes them, and
MedDINOv3Core.dicom.rtstruct_reader reads them)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

INTERPRETED_TYPES = (
    "EXTERNAL", "PTV", "CTV", "GTV", "TREATED_VOLUME", "IRRAD_VOLUME", "OAR", "BOLUS", "AVOIDANCE", "ORGAN", "MARKER",
    "REGISTRATION", "ISOCENTER", "CONTRAST_AGENT", "CAVITY", "BRACHY_CHANNEL", "BRACHY_ACCESSORY", "BRACHY_SRC_APP",
    "BRACHY_CHNL_SHLD", "SUPPORT", "FIXATION", "DOSE_REGION", "CONTROL", "DOSE_MEASUREMENT",
)  # fmt: skip
PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40), (128, 0, 0),
)  # fmt: skip
CONTOUR_DATA = 0x30060050
Code = tuple[str, str, str]
"""A coded concept (coding scheme designator, code value, code meaning), e.g. ("SCT", "10200004", "Liver")."""


def _as_code(value, what: str) -> Code | None:
    """A Code from (scheme, value, meaning) or {"scheme"/"code"/"meaning"} (model-card terminology); None passes."""
    from MedDINOv3Core.terminology import coded_concept

    if value is None:
        return None
    try:
        items = tuple(v.strip() for v in coded_concept(value))
    except (TypeError, ValueError):
        items = ()
    if len(items) != 3 or not all(items):
        raise ValueError(f"{what} must be (coding scheme, code value, code meaning), all non-empty; got {value!r}")
    if len(items[0]) > 16 or len(items[1]) > 64 or len(items[2]) > 64:
        raise ValueError(f"{what} {items!r}: scheme <= 16, code value and meaning <= 64 characters (DICOM SH/LO)")
    return items  # type: ignore[return-value]


@dataclass(frozen=True)
class RoiSpec:
    """One structure: the label ``value`` in the labelmap and its DICOM description.

    ``color`` is RGB in 0..255; ``interpreted_type`` one of :data:`INTERPRETED_TYPES`. ``code`` (what the structure
    is, e.g. SNOMED CT "Kidney"), ``category`` (e.g. "Anatomical Structure") and ``modifier`` (e.g. "Left") are
    optional coded concepts, each (scheme, value, meaning); ``roi_spec_from_label`` fills them from a model-card label.
    """

    value: int
    name: str
    color: tuple[int, int, int] = (255, 0, 0)
    interpreted_type: str = "ORGAN"
    code: Code | None = None
    category: Code | None = None
    modifier: Code | None = None

    def __post_init__(self) -> None:
        for field_name in ("code", "category", "modifier"):
            object.__setattr__(self, field_name, _as_code(getattr(self, field_name), f"ROI {self.name!r} {field_name}"))
        if (self.category or self.modifier) and not self.code:
            raise ValueError(f"ROI {self.name!r}: a category or modifier needs a code (what the structure is)")
        object.__setattr__(self, "value", int(self.value))
        object.__setattr__(self, "name", str(self.name).strip())
        object.__setattr__(self, "interpreted_type", str(self.interpreted_type or "ORGAN").strip().upper())
        color = tuple(int(round(float(c))) for c in self.color)
        if len(color) != 3 or min(color) < 0 or max(color) > 255:
            raise ValueError(f"ROI {self.name!r}: color must be three integers 0..255, got {self.color!r}")
        object.__setattr__(self, "color", color)
        if not self.name or len(self.name) > 64 or "\\" in self.name:
            raise ValueError(f"ROI name {self.name!r} must be 1..64 characters without backslashes")
        if self.interpreted_type not in INTERPRETED_TYPES:
            raise ValueError(
                f"ROI {self.name!r}: RT ROI Interpreted Type {self.interpreted_type!r} not in {INTERPRETED_TYPES}"
            )
        if self.value <= 0:
            raise ValueError(f"ROI {self.name!r}: label value must be a positive integer, got {self.value}")


def roi_spec_from_label(label: dict, interpreted_type: str = "ORGAN", color=None) -> RoiSpec:
    """A RoiSpec from a model-card label ({"value", "name", "color" 0..1 RGB, "terminology"}).

    The terminology's ``type`` becomes the ROI code, ``category`` its category and ``typeModifier`` its laterality
    modifier (model-card or slicerio form); a label without terminology gets a name and colour only.
    """
    term = label.get("terminology") or {}
    if color is None and label.get("color") is not None:
        color = tuple(int(round(255 * float(c))) for c in label["color"])
    return RoiSpec(
        int(label["value"]),
        str(label["name"]),
        color if color is not None else default_color(int(label["value"]) - 1),
        interpreted_type,
        code=term.get("type"),
        category=term.get("category") if term.get("type") else None,
        modifier=term.get("typeModifier") if term.get("type") else None,
    )


def _code_item(code: Code):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code[1], code[0], code[2]
    return item


def _read_code(seq) -> Code | None:
    if not seq:
        return None
    item = seq[0]
    code = (
        str(item.get("CodingSchemeDesignator", "")),
        str(item.get("CodeValue", "")),
        str(item.get("CodeMeaning", "")),
    )
    return code if all(code) else None


def default_color(index: int) -> tuple[int, int, int]:
    """A distinct display colour for the ``index``-th structure (0-based)."""
    return PALETTE[index % len(PALETTE)]


def as_roi_specs(rois: Iterable[RoiSpec | Sequence]) -> list[RoiSpec]:
    """Normalise ROIs given as :class:`RoiSpec` or tuples ``(value, name[, color[, interpreted_type]])``."""
    specs = []
    for i, roi in enumerate(rois):
        if isinstance(roi, RoiSpec):
            specs.append(roi)
            continue
        roi = tuple(roi)
        if not 2 <= len(roi) <= 4:
            raise ValueError(f"ROI {roi!r} must be (value, name[, color[, interpreted type]])")
        color = roi[2] if len(roi) > 2 and roi[2] is not None else default_color(i)
        specs.append(RoiSpec(roi[0], roi[1], color, roi[3] if len(roi) > 3 else "ORGAN"))
    values = [s.value for s in specs]
    names = [s.name.lower() for s in specs]
    if len(set(values)) != len(values):
        raise ValueError(f"two ROIs share a label value: {[int(v) for v in values]}")
    if len(set(names)) != len(names):
        raise ValueError(f"two ROIs share a name (ignoring case): {[s.name for s in specs]}")
    return specs
