"""The rerun rule: what every command does when its output already exists (stated in each command's --help).

Existing output is never silently replaced. A command whose output file exists, or whose output folder already holds
files, stops with one line unless the user adds --overwrite (or, for a command that continues a run, --resume).
--overwrite replaces only the command's own earlier output: a folder that also holds files the command did not write
is refused, so nothing of the user's is ever deleted. Caches (feature caches, the Hub cache) are not outputs: they are
reused by design.
"""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from training.common import CommandError, UsageError

OUTPUT_RULE = (
    "Existing output is never silently replaced: when an output file exists, or an output folder already holds "
    "files, the command stops with a one-line message unless you add {flags}. --overwrite replaces only this "
    "command's own earlier output; a folder that also holds other files is refused."
)


def output_rule(resumable: bool = False) -> str:
    """The rule as a command's --help states it (wrapped at 116 columns)."""
    flags = "--resume (continue the run in it) or --overwrite (start over)" if resumable else "--overwrite"
    return textwrap.fill(OUTPUT_RULE.format(flags=flags), 116)


def add_output_arguments(parser, resumable: bool = False) -> None:
    """``--overwrite`` (and, for a command that can continue a run, ``--resume``)."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace this command's earlier output (a folder that also holds other files is refused)",
    )
    if resumable:
        parser.add_argument("--resume", action="store_true", help="continue the run in the output folder")


def prepare_output_file(option: str, path: str | Path | None, overwrite: bool = False) -> None:
    """The rule for one output file: an existing file is refused unless ``overwrite`` (the writer then replaces it
    atomically); a folder at its place is a usage error."""
    if not path:
        return
    p = Path(path).expanduser()
    if p.is_dir():
        raise UsageError(f"{option} {p} is a folder; give a file name")
    if p.exists() and not overwrite:
        raise CommandError(f"{option} {p} already exists; add --overwrite to replace it, or choose a new name")


def prepare_output_files(option: str, where: str | Path, paths: list[Path], overwrite: bool = False) -> None:
    """The rule for the outputs of several cases in one folder: existing ones are refused unless ``overwrite`` (each
    is then replaced when its case is written); other files in the folder are not touched."""
    existing = [p.name for p in paths if p.exists()]
    if existing and not overwrite:
        raise CommandError(
            f"{option} {where} already holds the output of {len(existing)} of these {len(paths)} cases "
            f"({_some(existing)}); add --overwrite to replace them, or choose a new folder"
        )


def _owned(name: str, owned: tuple[str, ...]) -> bool:
    """A name the command writes, or a leftover of one of its atomic writes (``.NAME.tmp-*``)."""
    return name in owned or any(name.startswith(f".{o}.tmp-") for o in owned)


def _a(command: str) -> str:
    return f"{'an' if command[0] in 'aeiou' else 'a'} {command}"


def _some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def check_output_folder_rule(
    path: str | Path,
    *,
    command: str,
    owned: tuple[str, ...],
    markers: tuple[str, ...],
    resumable: bool = False,
    overwrite: bool = False,
    resume: bool = False,
    option: str = "output folder",
) -> str:
    """Apply the rule to an output folder without changing it: "new" (missing or empty), "resume" or "overwrite".

    ``owned``: the names the command writes in the folder (files and folders); ``markers``: the names of which one
    at least shows the folder holds this command's output. Raises UsageError for --resume with --overwrite and
    CommandError (one line) for a folder that may not be written.
    """
    if overwrite and resume:
        raise UsageError("--resume continues the run in the output folder, --overwrite starts over: give one")
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"{option} {out} is a file; give a folder")  # bad usage (exit 2), as for every command
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not entries:
        if resume:
            raise CommandError(f"--resume: {out} holds no {command} run to continue; run once without --resume first")
        return "new"
    if not any((out / m).exists() for m in markers):
        raise CommandError(
            f"{option} {out} already holds files that are not {_a(command)} output ({_some(entries)}); choose a new "
            "or empty folder"
        )
    if resume:
        return "resume"
    if not overwrite:
        flags = "--resume to continue it or --overwrite to start over" if resumable else "--overwrite to replace it"
        raise CommandError(f"{option} {out} already holds {_a(command)} output; add {flags}, or choose a new folder")
    foreign = [name for name in entries if not _owned(name, owned)]
    if foreign:
        raise CommandError(
            f"--overwrite: {out} also holds files {command} did not write ({_some(foreign)}); move them away or "
            "choose a new folder"
        )
    return "overwrite"


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink()


def prepare_output_folder(path: str | Path, *, owned: tuple[str, ...], **rule) -> str:
    """``check_output_folder_rule``, then, for "overwrite", the command's earlier output is removed."""
    mode = check_output_folder_rule(path, owned=owned, **rule)
    if mode == "overwrite":
        for p in sorted(Path(path).expanduser().iterdir()):
            _remove(p)
    return mode


@contextmanager
def replacing_output(path: str | Path | None, owned: tuple[str, ...]) -> Iterator[None]:
    """All-or-nothing --overwrite: the command's earlier entries in the folder are moved aside (``.NAME.tmp-old``)
    while the body writes the new output; they are deleted when it succeeds and put back when it fails. No folder
    (None) or nothing owned: the body just runs."""
    out = Path(path).expanduser() if path is not None else None
    moved: list[tuple[Path, Path]] = []
    if out is not None and out.is_dir():
        for name in owned:
            p = out / name
            if p.exists() or p.is_symlink():
                aside = out / f".{name}.tmp-old"
                if aside.exists():
                    _remove(aside)
                p.rename(aside)
                moved.append((aside, p))
    try:
        yield
    except BaseException:
        for aside, p in moved:
            if p.exists() or p.is_symlink():
                _remove(p)
            aside.rename(p)
        raise
    for aside, _ in moved:
        _remove(aside)


__all__ = [
    "OUTPUT_RULE",
    "add_output_arguments",
    "check_output_folder_rule",
    "output_rule",
    "prepare_output_file",
    "prepare_output_files",
    "prepare_output_folder",
    "replacing_output",
]
