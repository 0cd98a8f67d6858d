"""`python -m training bench`: the benchmark harness (training/bench/) behind the figures of BENCHMARKS.md."""

from __future__ import annotations

import json
from pathlib import Path

from MedDINOv3Core.atomic import write_text
from training.common import UsageError, check_cache_folder, positive_int, refuse_output_over_input
from training.outputs import add_output_arguments, output_rule, prepare_output_file

NAME = "bench"
HELP = "benchmark a case against its reference in the same process (median, peak memory, ratio, machine)"
EXAMPLES = """examples:
  python -m training bench predict --toy --repeats 1
  python -m training bench predict decoder extract --toy --repeats 1 --json bench.json
  python -m training bench predict --model models/abdomen --size 64 --slices 6 --repeats 1 --ablations
  python -m training bench backbone pretrain-step finetune-step click pca --toy --repeats 1

Cases: backbone, predict, decoder, extract, click, pca, pretrain-step, finetune-step (and any case module added
under training/bench/). Each case runs its variants interleaved with its reference in this one process and reports
the median over --repeats, each variant's peak RSS (and CUDA max allocated on a GPU), the ratio to the reference,
its quality metrics (e.g. the DSC of predict --fast against plain) and the machine with its load average. Models
have random weights unless --model names a model card; volumes are CT phantoms (MedDINOv3Core.data.phantom,
360 mm field of view, 1 mm slices). --toy runs every case at a toy size (tiny ViT, 32 x 32 slices) in seconds.
The ViT-B/16 figures of BENCHMARKS.md use e.g. `--preset vit_base --size 512 --slices 30 --repeats 1 --ablations`.

""" + output_rule()


def add_arguments(parser) -> None:
    parser.add_argument("cases", nargs="+", metavar="CASE", help="cases to run (see below)")
    parser.add_argument("--preset", default="vit_base", help="ViT preset of the random-weight models (vit_base)")
    parser.add_argument(
        "--model", help="a model (card folder, registry name or Hub repo) instead of random weights (predict, extract)"
    )
    parser.add_argument("--cache-dir", help="Hugging Face hub cache for a --model given by name")
    parser.add_argument("--size", type=positive_int, default=512, help="in-plane size of the slices (512)")
    parser.add_argument("--slices", type=positive_int, default=8, help="slices of the phantom or cache volume (8)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed runs of every variant (3)")
    parser.add_argument("--batch-size", type=positive_int, default=2, help="slices or images per batch (2)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (cpu)")
    parser.add_argument("--ablations", action="store_true", help="predict: also time fast with each technique off")
    parser.add_argument("--toy", action="store_true", help="tiny ViT, 32 x 32 slices: a smoke run of the harness")
    parser.add_argument("--json", metavar="OUT", help="also write the results to this JSON file")
    add_output_arguments(parser)


def run(args) -> int:
    from training.bench import BenchSettings, all_cases
    from training.bench.harness import run_case, summary_lines

    cases = all_cases()
    unknown = [c for c in args.cases if c not in cases]
    if unknown:
        raise UsageError(f"unknown benchmark case {', '.join(unknown)}; choose from {', '.join(sorted(cases))}")
    if args.threads < 0:
        raise UsageError(f"--threads must be >= 0, got {args.threads}")
    refuse_output_over_input({"--json": args.json}, {"--model": args.model})
    prepare_output_file("--json", args.json, args.overwrite)  # refused before the minutes of timing, not after
    check_cache_folder("--cache-dir", args.cache_dir)
    model = None
    if args.model:
        from MedDINOv3Core.hub import resolve_model

        model = str(resolve_model(args.model, cache_dir=args.cache_dir))
    settings = BenchSettings(
        preset=args.preset,
        size=args.size,
        slices=args.slices,
        repeats=args.repeats,
        threads=args.threads,
        batch_size=args.batch_size,
        device=args.device,
        model=model,
        toy=args.toy,
        ablations=args.ablations,
    )
    results = []
    for name in args.cases:
        result = run_case(cases[name], settings)
        results.append(result)
        print("\n".join(summary_lines(result)), flush=True)
    if args.json:
        out = Path(args.json).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text(out, json.dumps({"results": results}, indent=2, default=str) + "\n")  # atomic
    return 0
