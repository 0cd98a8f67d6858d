"""Shared by the bad-input modules: run a subcommand as a user would (``training.cli.main`` in process), assert it
was refused with one clear line and changed nothing, and make small bad inputs by class (Volume files, DICOM
folders, label maps)."""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.volume_io import write_volume
from training.cli import main

TINY = "meddinov3-phantom-tiny"  # the embedded demo model's registry name (Resources/models.json)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of ``python -m training ARGV``."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse and UsageError exit through parser.exit
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def digest(paths: Iterable[Path]) -> dict[str, str]:
    """SHA-256 of every file under ``paths`` (files or folders), to show that a refused run changed nothing."""
    hashes = {}
    for path in paths:
        path = Path(path)
        for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if f.is_file() or f.is_symlink():
                hashes[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest() if f.exists() else "dangling"
    return hashes


def refused(capsys, argv: Iterable, expect: str, *, inputs: Iterable = (), outputs: Iterable = (), code=None) -> str:
    """Run ``argv``: it fails (exit ``code``, or any non-zero), prints one ``error:`` line holding ``expect`` and no
    traceback, changes none of ``inputs`` and leaves none of ``outputs``. Returns the error line."""
    inputs = [Path(p) for p in inputs]
    before = digest(inputs)
    rc, out, err = run(capsys, *argv)
    assert "Traceback" not in err and "Traceback" not in out, err
    assert rc != 0 if code is None else rc == code, (rc, err)
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and expect in errors[0], err
    assert digest(inputs) == before
    left = [str(p) for p in outputs if Path(p).exists() or Path(p).is_symlink()]
    assert not left, f"partial output left behind: {left}"
    return errors[0]


# ---------------------------------------------------------------------------------------------- bad image files


def ct_volume(shape=(3, 24, 20)) -> Volume:
    """A small CT-like int16 volume (z, y, x), 1 mm voxels."""
    return Volume(np.linspace(-1000, 1000, int(np.prod(shape))).reshape(shape).astype(np.int16), (1.0, 1.0, 1.0))


def _float_with(value: float, name: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        array = ct_volume().array.astype(np.float32)
        array[1, 2, 3] = value
        return write_volume(Volume(array), folder / name)

    return make


def _cut(name: str, keep: float = 0.5) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = write_volume(ct_volume((4, 40, 40)), folder / name)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])
        return path

    return make


def _short_nifti(folder: Path) -> Path:
    """A whole gzip stream whose NIfTI header declares more voxels than it holds."""
    path = write_volume(ct_volume((4, 40, 40)), folder / "full.nii")
    data = path.read_bytes()
    path.unlink()
    (folder / "short.nii.gz").write_bytes(gzip.compress(data[: len(data) // 2]))
    return folder / "short.nii.gz"


def _mha(name: str, header: str, data: bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        (folder / name).write_bytes(header.encode() + data)
        return folder / name

    return make


def _complex(folder: Path) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.ones((5, 4, 3), np.complex64) * 1j, np.eye(4)), folder / "complex.nii.gz")
    return folder / "complex.nii.gz"


def _sheared(folder: Path) -> Path:
    import nibabel as nib

    affine = np.array([[1, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    nib.save(nib.Nifti1Image(np.zeros((5, 4, 3), np.int16), affine), folder / "sheared.nii")
    return folder / "sheared.nii"


def _text(folder: Path) -> Path:
    (folder / "notes.nii.gz").write_text("this is not an image\n")
    return folder / "notes.nii.gz"


def _empty(folder: Path) -> Path:
    (folder / "empty.nrrd").write_bytes(b"")
    return folder / "empty.nrrd"


def _dicom(damage: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        from MedDINOv3Core.dicom.series import write_series

        ct = Volume(ct_volume((6, 16, 16)).array, (2.5, 1.0, 1.0))
        if damage == "two series":
            a = write_series(ct, folder / "a", series_description="first")
            b = write_series(ct, folder / "b", series_description="second")
            (folder / "two").mkdir()
            for prefix, written in (("a", a), ("b", b)):
                for f in written.files:
                    f.rename(folder / "two" / f"{prefix}_{f.name}")
            return folder / "two"
        written = write_series(ct, folder / "series")
        if damage == "gap":
            written.files[3].unlink()
        elif damage == "truncated slice":
            written.files[3].write_bytes(written.files[3].read_bytes()[:-200])
        elif damage == "no dicom":
            for f in written.files:
                f.unlink()
            (folder / "series" / "readme.txt").write_text("nothing here")
        return folder / "series"

    return make


MHA = "ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n"

# class -> (make(folder) -> path, what the error line says)
BAD_IMAGES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing": (lambda folder: folder / "absent.nii.gz", "absent.nii.gz"),
    "empty file": (_empty, "empty.nrrd"),
    "text as image": (_text, "notes.nii.gz"),
    "NaN in NIfTI": (_float_with(np.nan, "nan.nii.gz"), "non-finite voxel"),
    "infinity in NRRD": (_float_with(np.inf, "inf.nrrd"), "non-finite voxel"),
    "NaN in MHA": (_float_with(-np.nan, "nan.mha"), "non-finite voxel"),
    "cut gzip stream": (_cut("cut.nii.gz"), "gzip stream is cut"),
    "short NIfTI": (_short_nifti, "truncated: its header declares"),
    "cut NRRD": (_cut("cut.nrrd"), "truncated"),
    "zero spacing": (
        _mha("zero.mha", MHA.replace("NDims = 3\n", "NDims = 3\nElementSpacing = 0 1 1\n"), bytes(8)),
        "Zero-valued spacing",
    ),  # fmt: skip
    "complex voxels": (_complex, "complex voxels"),
    "sheared axes": (_sheared, "orthonormal direction cosines"),
    "DICOM gap": (_dicom("gap"), "slices are missing"),
    "DICOM truncated slice": (_dicom("truncated slice"), "truncated or damaged"),
    "DICOM two series": (_dicom("two series"), "::<SeriesInstanceUID>"),
    "folder without DICOM": (_dicom("no dicom"), "series"),
}
