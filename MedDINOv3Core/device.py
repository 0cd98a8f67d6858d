"""Device choice (CUDA -> Apple MPS -> CPU, with an override) and the matching autocast policy.

fp32 on CPU: on CPUs without AVX-512/AMX bf16 runs 6-7x slower than fp32. bf16 autocast on CUDA when supported
(fp16 otherwise), fp16 on MPS. ``auto_batch_size`` sizes a batch to the free CUDA memory; ``HostCopies`` brings
results to the host without a round trip per batch.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def select_device(preference: str | torch.device | None = "auto") -> torch.device:
    """Resolve "auto" / "cpu" / "cuda" / "cuda:N" / "mps" to an available torch.device; raise if unavailable."""
    if isinstance(preference, torch.device):
        return preference
    pref = (preference or "auto").lower()
    mps_ok = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_ok else torch.device("cpu")
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                "CUDA was requested but this torch build sees no CUDA GPU "
                f"(torch {torch.__version__}); use --device cpu or install a CUDA build of torch"
            )
        return torch.device(pref)
    if pref == "mps":
        if not mps_ok:
            raise RuntimeError("Apple MPS was requested but is not available; use --device cpu")
        return torch.device("mps")
    if pref == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {preference!r}; choose one of {DEVICE_CHOICES} (or cuda:N)")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype for ``device``; None means run in fp32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return None


def autocast(device: torch.device, enabled: bool = True):
    """An autocast context for ``device`` (a no-op on CPU or when disabled)."""
    dtype = autocast_dtype(device)
    if not enabled or dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def auto_batch_size(
    device: torch.device, bytes_per_item: int, default: int, fraction: float = 0.7, cap: int = 64
) -> int:
    """Items per batch that fit in ``fraction`` of the free memory of a CUDA ``device`` (``default`` elsewhere).

    Args:
        device: the device the batch runs on.
        bytes_per_item: the estimated device memory one item needs in a forward pass.
        default: the batch size on CPU/MPS (and the floor on CUDA).
        fraction: share of the free memory to use (the rest: the allocator's fragmentation, other processes).
        cap: the largest batch returned.
    """
    if device.type != "cuda" or bytes_per_item <= 0:
        return default
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(default, min(cap, int(free * fraction) // bytes_per_item)))


def compile_blocks(model: torch.nn.Module) -> int:
    """Compile every transformer block of ``model`` in place with ``torch.compile`` (regional compilation: one
    block's graph is compiled once and reused by the others, and the state-dict keys stay as they are, so
    checkpoints and model cards are unchanged). For GPUs; the first steps or batches pay the compilation. Returns
    the number of blocks compiled."""
    n = 0
    for module in list(model.modules()):
        blocks = getattr(module, "blocks", None)
        if isinstance(blocks, torch.nn.ModuleList):
            for block in blocks:
                block.compile()
                n += 1
    return n


class HostCopies:
    """Batches of device tensors brought to the host one batch behind, so that the loops never wait for the device.

    ``put(key, *tensors)`` starts the copy of one batch's results and returns the batches whose copies are done, as
    ``(key, numpy arrays)``: on the CPU the batch itself at once; on CUDA the previous batch, copied asynchronously
    into pinned memory while this one was queued (one host-device round trip a batch would leave the GPU idle while
    the host reads a result and prepares the next batch). ``flush()`` returns what is still in flight.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._in_flight: list[tuple[Any, tuple[torch.Tensor, ...], Any]] = []

    def put(self, key: Any, *tensors: torch.Tensor) -> list[tuple[Any, tuple[np.ndarray, ...]]]:
        if self.device.type != "cuda":
            return [(key, tuple(t.detach().cpu().numpy() for t in tensors))]
        hosts = tuple(torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors)
        for host, t in zip(hosts, tensors, strict=True):
            host.copy_(t.detach(), non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))  # the stream the copies were queued on
        ready = self.flush()
        self._in_flight.append((key, hosts, done))
        return ready

    def flush(self) -> list[tuple[Any, tuple[np.ndarray, ...]]]:
        out = []
        for key, hosts, done in self._in_flight:
            done.synchronize()
            out.append((key, tuple(h.numpy() for h in hosts)))
        self._in_flight = []
        return out
