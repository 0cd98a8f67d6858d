"""`python -m training cache`: list and clean the feature caches of `python -m training explore`."""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from pathlib import Path

from training.common import UsageError, check_cache_folder, non_negative_float

NAME = "cache"
HELP = "list or remove the feature caches written by `explore` (model, volume, size on disk, date)"
EXAMPLES = """examples:
  python -m training cache list
  python -m training cache list --cache-dir /tmp/ct-features
  python -m training cache clean --older-than 30
  python -m training cache clean --all --dry-run

The caches are looked for in ~/.cache/meddinov3/features (explore's default) or in each --cache-dir: a folder that
is itself a cache, or whose sub-folders are. A folder counts as a feature cache only when its header.json says so;
`clean` removes nothing else, and leaves alone a cache folder that also holds other files.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, help_text in (("list", "show the feature caches"), ("clean", "remove feature caches")):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--cache-dir",
            action="append",
            metavar="DIR",
            help="a cache folder or a folder of caches (repeatable; default: ~/.cache/meddinov3/features)",
        )
        if name == "clean":
            p.add_argument(
                "--older-than", type=non_negative_float, metavar="DAYS", help="remove the caches older than DAYS days"
            )
            p.add_argument("--all", action="store_true", help="remove every cache found")
            p.add_argument("--dry-run", action="store_true", help="only say what would be removed")


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _roots(args) -> list[Path]:
    from MedDINOv3Core.feature_cache import default_cache_root

    return [Path(d).expanduser() for d in args.cache_dir] if args.cache_dir else [default_cache_root()]


def _date(seconds: float) -> str:
    return datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M")


def run(args: argparse.Namespace) -> int:
    from MedDINOv3Core.feature_cache import FeatureCacheError, find_caches, remove_cache

    for folder in args.cache_dir or []:
        check_cache_folder("--cache-dir", folder)
    roots = _roots(args)
    where = ", ".join(str(r) for r in roots)
    if args.action == "clean":
        if args.older_than is None and not args.all:
            raise UsageError("say which caches to remove: --older-than DAYS or --all")
        if args.older_than is not None and args.older_than < 0:
            raise UsageError(f"--older-than must not be negative, got {args.older_than}")
    caches = find_caches(roots)
    if args.action == "list":
        if not caches:
            print(f"no feature caches in {where}")
            return 0
        width = max(len("MODEL"), *(len(c.model) for c in caches))
        vwidth = max(len("VOLUME"), *(len(c.volume) for c in caches))
        print(f"{'MODEL':<{width}}  {'VOLUME':<{vwidth}}  {'SIZE':>9}  {'DATE':<16}  PATH")
        for c in caches:
            note = "  (also holds other files)" if c.foreign else ""
            print(
                f"{c.model:<{width}}  {c.volume:<{vwidth}}  {human_size(c.size):>9}  {_date(c.created)}  {c.path}{note}"
            )
        total = sum(c.size for c in caches)
        print(f"{len(caches)} feature cache{'s' if len(caches) != 1 else ''}, {human_size(total)} in {where}")
        return 0

    cutoff = time.time() - args.older_than * 86400 if args.older_than is not None else None
    chosen = [c for c in caches if args.all or c.created < cutoff]
    freed, removed, kept = 0, 0, []
    for c in chosen:
        if args.dry_run:
            print(f"would remove {c.path} ({c.model}, {c.volume}, {human_size(c.size)}, {_date(c.created)})")
            freed, removed = freed + c.size, removed + 1
            continue
        try:
            freed += remove_cache(c)
        except (FeatureCacheError, OSError) as exc:
            kept.append(c)
            print(f"kept {c.path}: {exc}")
            continue
        removed += 1
        print(f"removed {c.path} ({c.model}, {c.volume}, {human_size(c.size)})")
    verb = "would free" if args.dry_run else "freed"
    rest = len(caches) - removed
    print(
        f"{'would remove' if args.dry_run else 'removed'} {removed} feature cache{'s' if removed != 1 else ''}, "
        f"{verb} {human_size(freed)}; {rest} left in {where}"
    )
    return 1 if kept else 0
