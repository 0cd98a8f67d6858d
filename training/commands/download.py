"""`python -m training download`: fetch a model into the Hugging Face cache, verify it and convert it once."""

from __future__ import annotations

import sys

from training.common import CommandError, Progress, add_progress_argument, check_cache_folder

NAME = "download"
HELP = "download a registered model or a Hub repo, verify its SHA-256 and convert it into a model card"
EXAMPLES = """examples:
  python -m training download meddinov3-vitb16-ct3m
  python -m training download dinov3-vitb16-lvd1689m --token hf_...       (gated: accept the licence first)
  python -m training download ricklisz123/MedDINOv3-ViTB-16-CT-3M --revision main --cache-dir /data/hf-cache
  HF_HUB_OFFLINE=1 python -m training download meddinov3-vitb16-ct3m     (checks and converts a cached copy)

The model card's directory is printed on stdout (with --progress json: a final {"stage": "done", ...} line whose
"path" holds it). Behind a proxy set HTTPS_PROXY; for a Hub mirror set HF_ENDPOINT. To move a model to a machine
without internet, download with --cache-dir DIR, copy DIR, and there set HF_HUB_CACHE=DIR (or pass --cache-dir DIR to
download and predict, --hub-cache-dir DIR to explore).
"""


def add_arguments(parser) -> None:
    parser.add_argument("model", metavar="NAME|REPO", help="registry name, org/name[@revision], or a local checkpoint")
    parser.add_argument("--revision", help="branch, tag or commit (default: the registry's pinned revision or main)")
    parser.add_argument("--cache-dir", help="Hugging Face hub cache to download into (default: HF_HUB_CACHE)")
    parser.add_argument(
        "--token",
        help="Hugging Face token for gated/private repos (default: HF_TOKEN or the `hf auth login` token; prefer "
        "those: a token on the command line is visible to other users of the machine)",
    )
    parser.add_argument("--registry", help="registry JSON to read (default: Resources/models.json)")
    parser.add_argument(
        "--offline", action="store_true", help="never touch the network: only verify and convert a cached copy"
    )
    add_progress_argument(parser)


def run(args) -> int:
    from MedDINOv3Core.hub import HubError, resolve_model
    from MedDINOv3Core.progress import write_progress_line
    from MedDINOv3Core.registry import RegistryError

    check_cache_folder("--cache-dir", args.cache_dir)
    with Progress(args.progress) as progress:
        try:
            path = resolve_model(
                args.model,
                cache_dir=args.cache_dir,
                token=args.token,
                revision=args.revision,
                offline=True if args.offline else None,
                progress=progress,
                registry=args.registry,
                check_updates=not args.offline,
            )
        except (HubError, RegistryError) as exc:
            raise CommandError(str(exc)) from None
    if args.progress == "json":
        write_progress_line(sys.stdout, "done", 1, 1, str(path), path=str(path))
    else:
        sys.stdout.write(f"{path}\n")
    return 0
