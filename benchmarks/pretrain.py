"""Thin wrapper: `python -m training bench pretrain-step ...` (the harness in training/bench/; see BENCHMARKS.md).

.venv/bin/python benchmarks/pretrain.py [bench options, e.g. --repeats 3 --json out.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *"pretrain-step".split(), *sys.argv[1:]]))
