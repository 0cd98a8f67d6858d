"""RT Structure Sets: proven by dciodvfy and plastimatch, our own reader, the DICOM content, and bad inputs."""

from __future__ import annotations

import logging

import numpy as np
import pydicom
import pytest
from dicom_testdata import GEOMETRIES, ROIS, dsc, make_ct, phantom_labels, sample_on_grid

from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.dicom.contours import mask_to_polygons, polygons_to_mask, signed_area
from MedDINOv3Core.dicom.rtstruct import (
    RoiSpec,
    align_to_grid,
    as_roi_specs,
    read_rtstruct,
    read_rtstruct_labelmap,
    read_rtstruct_rois,
    roi_spec_from_label,
    write_rtstruct,
)
from MedDINOv3Core.dicom.series import write_series
from MedDINOv3Core.dicom.series_reader import read_series


def _export(tmp_path, geometry: str):
    ct = make_ct(GEOMETRIES[geometry])
    labels = ct.with_array(phantom_labels())
    series = write_series(ct, tmp_path / "ct", patient_position="FFS" if "feet" in geometry else "HFS")
    path = write_rtstruct(labels, series, ROIS, tmp_path / "rs.dcm")
    return labels, series, path


# --- contours --------------------------------------------------------------------------------------------------


def test_contours_round_trip_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(200):
        mask = rng.random((rng.integers(1, 16), rng.integers(1, 16))) < rng.random()
        polygons = mask_to_polygons(mask)
        assert np.array_equal(polygons_to_mask(polygons, mask.shape), mask)
        # Voxel-edge contours enclose the voxel area (less the corner cuts at diagonal contacts).
        assert abs(sum(signed_area(p) for p in polygons) - mask.sum()) <= 0.01 * 4 * len(polygons) + 1e-9


def test_contours_hole_and_diagonal_neighbours():
    mask = np.zeros((7, 9), bool)
    mask[1:6, 1:6] = True
    mask[3, 3] = False  # a hole
    mask[0, 7] = mask[1, 8] = True  # two voxels touching at a corner: separate, non-touching polygons
    polygons = mask_to_polygons(mask)
    areas = sorted(signed_area(p) for p in polygons)
    assert areas[0] == pytest.approx(-1.0) and areas[-1] == pytest.approx(25.0)
    assert len(polygons) == 4
    small = [p for p in polygons if abs(signed_area(p)) < 1]
    assert min(np.linalg.norm(a - b) for a in small[0] for b in small[1]) > 0.1


def test_rasteriser_matches_brute_force_point_in_polygon():
    rng = np.random.default_rng(3)
    angles = np.sort(rng.random(12)) * 2 * np.pi
    radii = 4 + 5 * rng.random(12)
    polygon = np.c_[10 + radii * np.cos(angles), 9 + radii * np.sin(angles)]
    fast = polygons_to_mask([polygon], (20, 22))
    slow = np.zeros_like(fast)
    for r in range(20):
        for c in range(22):  # crossing number of a ray from the centre towards -x
            inside = False
            for (x0, y0), (x1, y1) in zip(polygon, np.roll(polygon, -1, axis=0), strict=True):
                if (y0 <= r < y1) or (y1 <= r < y0):
                    if x0 + (r - y0) * (x1 - x0) / (y1 - y0) <= c:
                        inside = not inside
            slow[r, c] = inside
    assert np.array_equal(fast, slow) and fast.sum() > 50


# --- independent tools -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_plastimatch_reads_our_structures(tmp_path, geometry, plastimatch, dciodvfy):
    labels, series, path = _export(tmp_path, geometry)
    assert dciodvfy(path) == []
    masks = plastimatch(path, tmp_path / "ct")
    assert sorted(masks) == sorted(name for _, name, *_ in ROIS)
    for value, name, *_ in ROIS:
        theirs = sample_on_grid(masks[name], labels) > 0
        score = dsc(theirs, labels.array == value)
        assert score >= 0.95, (geometry, name, score)
    # The check can see a mirror: the L shape flipped left-right scores far below the target.
    assert dsc(sample_on_grid(masks["Ell"], labels)[:, :, ::-1] > 0, labels.array == 3) < 0.5


# --- our reader ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_own_reader_round_trip(tmp_path, geometry):
    labels, _, path = _export(tmp_path, geometry)
    series = read_series(tmp_path / "ct")  # fresh from disk: may be stacked the other way
    expected = align_to_grid(labels, series.volume)
    masks = read_rtstruct(path, series)
    assert list(masks) == ["Ring", "Islands", "Ell"]
    for value, name, *_ in ROIS:
        assert dsc(masks[name], expected == value) >= 0.97
        assert np.array_equal(masks[name], expected == value)  # voxel-edge contours round-trip exactly
    labelmap, rois = read_rtstruct_labelmap(path, series)
    assert np.array_equal(labelmap.array, expected) and labelmap.same_geometry(series.volume)
    assert [(r.value, r.name, r.color, r.interpreted_type) for r in rois] == [
        (1, "Ring", (255, 0, 0), "ORGAN"),
        (2, "Islands", (0, 200, 0), "OAR"),
        (3, "Ell", (0, 0, 255), "ORGAN"),
    ]


def test_structure_set_content(tmp_path):
    labels, series, path = _export(tmp_path, "feet_first_supine")
    ds = pydicom.dcmread(path)
    assert ds.Modality == "RTSTRUCT" and ds.StudyInstanceUID == series.study_instance_uid
    assert ds.PatientID == series.patient["PatientID"]
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == series.frame_of_reference_uid
    ref_series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert ref_series.SeriesInstanceUID == series.series_instance_uid
    assert [i.ReferencedSOPInstanceUID for i in ref_series.ContourImageSequence] == list(series.sop_instance_uids)
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["Ring", "Islands", "Ell"]
    assert all(r.ReferencedFrameOfReferenceUID == series.frame_of_reference_uid for r in ds.StructureSetROISequence)
    assert [list(rc.ROIDisplayColor) for rc in ds.ROIContourSequence] == [[255, 0, 0], [0, 200, 0], [0, 0, 255]]
    assert [o.RTROIInterpretedType for o in ds.RTROIObservationsSequence] == ["ORGAN", "OAR", "ORGAN"]
    slice_of_z = {round(float(p[2]), 3): k for k, p in enumerate(series.positions)}
    per_slice: dict[tuple[int, int], list[float]] = {}
    for rc in ds.ROIContourSequence:
        for contour in rc.ContourSequence:
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            points = np.asarray(contour.ContourData, float).reshape(-1, 3)
            assert len(points) == contour.NumberOfContourPoints
            assert np.ptp(points[:, 2]) < 1e-6  # planar, on the image plane of the slice it references
            k = slice_of_z[round(float(points[0, 2]), 3)]
            assert contour.ContourImageSequence[0].ReferencedSOPInstanceUID == series.sop_instance_uids[k]
            per_slice.setdefault((int(rc.ReferencedROINumber), k), []).append(signed_area(points[:, :2]))
    # Ring slice 3 (of the labelmap): one counter-clockwise outer contour and one clockwise hole.
    k3 = int(np.argmin(np.abs(series.positions[:, 2] - labels.index_to_physical((0, 0, 3))[2])))
    ring = sorted(per_slice[(1, k3)])
    assert len(ring) == 2 and ring[0] < 0 < ring[1]
    k2 = int(np.argmin(np.abs(series.positions[:, 2] - labels.index_to_physical((0, 0, 2))[2])))
    islands = per_slice[(2, k2)]
    assert len(islands) == 2 and all(a > 0 for a in islands)


def test_permuted_labelmap_volume_is_aligned(tmp_path):
    """A labelmap Volume stored with other axis order/signs but the same voxel centres is accepted."""
    ct = make_ct()
    labels = phantom_labels()
    series = write_series(ct, tmp_path / "ct")
    d = ct.direction_matrix
    flipped = Volume(
        np.ascontiguousarray(np.transpose(labels, (0, 2, 1))[::-1]),
        (ct.spacing[1], ct.spacing[0], ct.spacing[2]),
        ct.index_to_physical((0, 0, ct.shape[0] - 1)),
        tuple(np.column_stack([d[:, 1], d[:, 0], -d[:, 2]]).ravel()),
    )
    assert np.array_equal(align_to_grid(flipped, ct), labels)
    path = write_rtstruct(flipped, series, ROIS, tmp_path / "rs.dcm")
    assert np.array_equal(read_rtstruct(path, series)["Ell"], labels == 3)


def test_reads_rois_of_pydicom_rtstruct():
    rois = read_rtstruct_rois(pydicom.data.get_testdata_file("rtstruct.dcm"))
    assert [r.name for r in rois] and all(0 <= c <= 255 for r in rois for c in r.color)


# --- bad inputs ------------------------------------------------------------------------------------------------


def test_grid_mismatch(tmp_path):
    ct = make_ct()
    series = write_series(ct, tmp_path / "ct")
    with pytest.raises(ValueError, match=r"labelmap shape \(9, 40, 40\) differs"):
        write_rtstruct(phantom_labels()[:, :, :40], series, ROIS, tmp_path / "rs.dcm")
    shifted = Volume(phantom_labels(), ct.spacing, np.add(ct.origin, (0.4, 0, 0)), ct.direction)
    with pytest.raises(ValueError, match="grid does not match the reference series.*resample"):
        write_rtstruct(shifted, series, ROIS, tmp_path / "rs.dcm")
    assert not (tmp_path / "rs.dcm").exists()


def test_non_axial_series(tmp_path):
    coronal = make_ct((1, 0, 0, 0, 0, 1, 0, -1, 0))  # rows along x, columns along z: coronal planes
    series = write_series(coronal, tmp_path / "ct")
    with pytest.raises(ValueError, match="not axial.*resample"):
        write_rtstruct(phantom_labels(), series, ROIS, tmp_path / "rs.dcm")


def test_empty_label_is_skipped_with_warning(tmp_path, caplog):
    ct = make_ct()
    series = write_series(ct, tmp_path / "ct")
    rois = [*ROIS, (7, "Spleen")]
    with caplog.at_level(logging.WARNING):
        path = write_rtstruct(phantom_labels(), series, rois, tmp_path / "rs.dcm")
    assert "'Spleen' (label 7) has no voxels" in caplog.text
    assert [r.name for r in read_rtstruct_rois(path)] == ["Ring", "Islands", "Ell"]
    with pytest.raises(ValueError, match="no voxels for any ROI"):
        write_rtstruct(np.zeros(ct.shape, np.uint8), series, rois, tmp_path / "empty.dcm")


def test_coded_rois_from_model_card_labels(tmp_path, dciodvfy):
    """SNOMED CT terminology of model-card labels -> Segmented Property Category, RT ROI Identification Code and its
    laterality modifier; dciodvfy accepts them and the reader gets them back."""
    from MedDINOv3Core.data.phantom import phantom_label_table

    table = {t["name"]: t for t in phantom_label_table()}
    labels = [dict(table[name], value=v) for v, name in ((1, "liver"), (2, "left kidney"), (3, "right kidney"))]
    specs = [roi_spec_from_label(label) for label in labels]
    ct = make_ct()
    series = write_series(ct, tmp_path / "ct")
    path = write_rtstruct(ct.with_array(phantom_labels()), series, specs, tmp_path / "rs.dcm")
    assert dciodvfy(path) == []
    ds = pydicom.dcmread(path)
    kidney = ds.RTROIObservationsSequence[1]
    ident = kidney.RTROIIdentificationCodeSequence[0]
    assert (ident.CodingSchemeDesignator, ident.CodeValue, ident.CodeMeaning) == ("SCT", "64033007", "Kidney")
    assert ident.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Left"
    assert kidney.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "123037004"
    assert (
        "SegmentedPropertyTypeModifierCodeSequence"
        not in ds.RTROIObservationsSequence[0].RTROIIdentificationCodeSequence[0]
    )
    assert read_rtstruct_rois(path) == specs
    _, back = read_rtstruct_labelmap(path, series)
    assert [(r.code, r.modifier) for r in back] == [(s.code, s.modifier) for s in specs]
    # a label without terminology: name and colour only, no code sequences
    plain = roi_spec_from_label({"value": 4, "name": "tumour", "color": [1.0, 0.0, 0.0]})
    assert plain.code is None and plain.color == (255, 0, 0)


def test_more_labels_than_names(tmp_path):
    series = write_series(make_ct(), tmp_path / "ct")
    with pytest.raises(ValueError, match=r"labels \[3\] that have no ROI name \(3 labels, 2 names\)"):
        write_rtstruct(phantom_labels(), series, ROIS[:2], tmp_path / "rs.dcm")


def test_bad_roi_specs():
    with pytest.raises(ValueError, match="color must be three integers 0..255"):
        RoiSpec(1, "Liver", (300, 0, 0))
    with pytest.raises(ValueError, match="Interpreted Type 'BLOB'"):
        RoiSpec(1, "Liver", (1, 2, 3), "blob")
    with pytest.raises(ValueError, match="share a name"):
        as_roi_specs([(1, "Liver"), (2, "liver")])
    with pytest.raises(ValueError, match="code must be \\(coding scheme, code value, code meaning\\), all non-empty"):
        RoiSpec(1, "Liver", code=("SCT", "", "Liver"))
    with pytest.raises(ValueError, match="a category or modifier needs a code"):
        RoiSpec(1, "Left kidney", modifier=("SCT", "7771000", "Left"))
    with pytest.raises(ValueError, match="<= 64 characters"):
        RoiSpec(1, "Liver", code=("SCT", "10200004", "x" * 65))
    with pytest.raises(ValueError, match="share a label value"):
        as_roi_specs([(1, "Liver"), (1, "Spleen")])


def test_foreign_frame_of_reference_is_refused(tmp_path):
    ct = make_ct()
    series = write_series(ct, tmp_path / "ct")
    path = write_rtstruct(phantom_labels(), series, ROIS, tmp_path / "rs.dcm")
    other = write_series(ct, tmp_path / "other")
    with pytest.raises(ValueError, match="frame of reference"):
        read_rtstruct(path, other)


def test_non_ascii_names_use_utf8(tmp_path, dciodvfy):
    ct = make_ct()
    series = write_series(ct, tmp_path / "ct", patient={"PatientName": "Müller^Jörg"})
    path = write_rtstruct(phantom_labels(), series, [(1, "Leber ä"), (2, "Niere"), (3, "Milz")], tmp_path / "rs.dcm")
    assert dciodvfy(path) == []
    ds = pydicom.dcmread(path)
    assert ds.SpecificCharacterSet == "ISO_IR 192" and ds.PatientName == "Müller^Jörg"
    masks = read_rtstruct(path, series)
    assert list(masks) == ["Leber ä", "Niere", "Milz"]
    assert np.array_equal(masks["Leber ä"], phantom_labels() == 1)


@pytest.mark.slow
def test_real_head_ct_through_plastimatch(tmp_path, real_head_ct, plastimatch, dciodvfy):
    """A real CT with anatomy-shaped structures: the skull alone has hundreds of islands and holes across slices."""
    from scipy import ndimage

    hu = real_head_ct[30:78]  # 48 slices through the skull base and orbits: the most intricate ones
    ct = Volume(hu, (0.9570312, 0.9570312, 1.5), (-120.0, -130.0, 40.0), GEOMETRIES["feet_first_supine"])
    parts, _ = ndimage.label(hu > -300)
    head = ndimage.binary_fill_holes(parts == np.argmax(np.bincount(parts.ravel())[1:]) + 1)
    labels = np.zeros(hu.shape, np.uint8)
    labels[head] = 1
    labels[head & (hu > 226)] = 2
    labels[head & (hu < -400)] = 3
    rois = [(1, "SoftTissue"), (2, "Bone"), (3, "AirCavities")]
    series = write_series(ct, tmp_path / "ct")
    path = write_rtstruct(labels, series, rois, tmp_path / "rs.dcm")
    assert dciodvfy(path) == []
    theirs = plastimatch(path, tmp_path / "ct")
    read = read_series(tmp_path / "ct")
    ours, expected = read_rtstruct(path, read), align_to_grid(ct.with_array(labels), read.volume)
    for value, name in rois:
        assert dsc(sample_on_grid(theirs[name], ct) > 0, labels == value) >= 0.95, name
        assert np.array_equal(ours[name], expected == value), name


def test_label_values_survive_a_round_trip(tmp_path):
    """ROI Number = label value, so sparse label values (as in multi-organ models) come back unchanged."""
    ct = make_ct()
    series = write_series(ct, tmp_path / "ct")
    labels = phantom_labels().astype(np.uint16)
    labels[labels == 3] = 300
    labels[labels == 2] = 9
    path = write_rtstruct(labels, series, [(300, "C"), (1, "A"), (9, "B")], tmp_path / "rs.dcm")
    labelmap, rois = read_rtstruct_labelmap(path, series)
    assert np.array_equal(labelmap.array, labels)
    assert [(r.value, r.name) for r in rois] == [(300, "C"), (1, "A"), (9, "B")]
