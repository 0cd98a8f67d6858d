"""`python -m training models`: the model registry with licences, gated flags and what is cached locally."""

from __future__ import annotations

import json
import sys

from training.common import CommandError, check_cache_folder

NAME = "models"
HELP = "list the registered models with their licence, whether they are gated and whether they are cached"
EXAMPLES = """examples:
  python -m training models
  python -m training models --cache-dir /data/hf-cache
  python -m training models --json
"""


def add_arguments(parser) -> None:
    parser.add_argument("--cache-dir", help="Hugging Face hub cache to inspect (default: HF_HUB_CACHE)")
    parser.add_argument("--registry", help="registry JSON to read (default: Resources/models.json)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per model instead of a table")


def _rows(statuses) -> list[dict]:
    rows = []
    for s in statuses:
        e = s.entry
        rows.append(
            {
                "name": e.name,
                "task": e.task,
                "license": e.license,
                "gated": e.gated,
                "cached": s.cached,
                "card": str(s.card) if s.card else None,
                "repo": f"bundled: {e.path}" if e.bundled else f"{e.repo_id}@{e.revision}",
                "format": e.format,
                "description": e.description,
                "license_url": e.license_url,
            }
        )
    return rows


def run(args) -> int:
    from MedDINOv3Core.hub import list_models
    from MedDINOv3Core.registry import RegistryError

    check_cache_folder("--cache-dir", args.cache_dir)
    try:
        rows = _rows(list_models(registry=args.registry, cache_dir=args.cache_dir))
    except RegistryError as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        for row in rows:
            sys.stdout.write(json.dumps(row) + "\n")
        return 0
    table = [("NAME", "TASK", "LICENCE", "CACHED", "REPO")]
    for r in rows:
        licence = r["license"] + (" (gated)" if r["gated"] else "")
        cached = "converted" if r["card"] else ("yes" if r["cached"] else "no")
        table.append((r["name"], r["task"], licence, cached, r["repo"]))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        sys.stdout.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() + "\n")
    sys.stdout.write("\n")
    for r in rows:
        sys.stdout.write(f"{r['name']}: {r['description']}\n")
    if any(r["gated"] and not r["cached"] for r in rows):
        sys.stdout.write(
            "\nGated models: accept the licence on the model's Hugging Face page, then set HF_TOKEN (or run "
            "`python -m training download NAME --token hf_...`).\n"
        )
    return 0
