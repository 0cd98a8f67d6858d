"""Loading torch files without unpickling code: ``torch.load(weights_only=True)`` with errors that name the file.

Used for training checkpoints (MedDINOv3Core.train.checkpoint) and upstream checkpoints (MedDINOv3Core.convert).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch


def load_weights_only(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", what: str = "checkpoint"
) -> dict[str, Any]:
    """The contents of the torch file ``path``, loaded with ``weights_only=True`` (tensors and plain containers).

    Args:
        what: what the file is meant to be ("pretraining checkpoint", "finetune checkpoint", "checkpoint file"),
            used in the error messages.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is corrupt, not a torch file, or holds pickled code (which is refused).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p}")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for corrupt or unsafe files
        # one line: torch's weights-only message spans a dozen lines and suggests loading the file unsafely
        reason = "not a torch file, or it holds pickled code" if isinstance(exc, pickle.UnpicklingError) else exc
        reason = " ".join(str(reason).split())[:200]
        raise ValueError(
            f"could not read {p}: not a readable {what} ({type(exc).__name__}: {reason}). It is loaded weights-only: "
            "files holding pickled code are refused"
        ) from exc
