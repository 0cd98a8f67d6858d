"""Thin wrapper: `python -m training bench fewshot-loop ...` (the harness in training/bench/; see BENCHMARKS.md).

.venv/bin/python benchmarks/fewshot_loop.py [bench options, e.g. --slices 100 --size 512 --repeats 1 --json out.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", "fewshot-loop", *sys.argv[1:]]))
