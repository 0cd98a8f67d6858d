"""Runs a benchmark case: interleaved variants, medians, per-variant peak memory, ratios, machine description."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any

from training.bench import BenchSettings, Case


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (``uptime``); empty where the OS has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """CPU model, cores, torch version and threads, GPU name (when one is used)."""
    import torch

    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    return info


def _reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (Linux ``clear_refs`` 5); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """RSS high-water mark (VmHWM after the last reset; else ``getrusage`` ru_maxrss), MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cuda_peak_start() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _cuda_peak_mb() -> float | None:
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def run_case(case: Case, settings: BenchSettings) -> dict[str, Any]:
    """Set the case up, run its variants interleaved ``settings.repeats`` times; return the JSON-ready result."""
    import torch

    if settings.threads:
        torch.set_num_threads(settings.threads)
    load_before = load_average()
    torch.manual_seed(0)
    prepared = case.setup(settings)
    names = list(prepared.variants)
    if prepared.reference is not None and prepared.reference not in prepared.variants:
        raise ValueError(f"case {case.name}: the reference {prepared.reference!r} is not one of {names}")
    try:
        if prepared.warmup is not None:
            prepared.warmup()
        times: dict[str, list[float]] = {n: [] for n in names}
        rss: dict[str, float] = dict.fromkeys(names, 0.0)
        cuda: dict[str, float | None] = dict.fromkeys(names)
        outputs: dict[str, Any] = {}
        reset = True
        for _ in range(max(1, settings.repeats)):
            for name in names:  # interleaved: A B A B ... so that load changes hit every variant alike
                reset = _reset_peak_rss() and reset
                _cuda_peak_start()
                t0 = time.perf_counter()
                outputs[name] = prepared.variants[name]()
                if torch.cuda.is_available() and torch.cuda.is_initialized():
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - t0)
                rss[name] = max(rss[name], peak_rss_mb())
                peak = _cuda_peak_mb()
                cuda[name] = peak if cuda[name] is None else max(cuda[name], peak or 0.0)
        medians = {n: statistics.median(t) for n, t in times.items()}
        metrics = prepared.metrics(outputs, medians) if prepared.metrics is not None else {}
    finally:
        if prepared.cleanup is not None:
            prepared.cleanup()
    variants = {}
    for name in names:
        med = statistics.median(times[name])
        row: dict[str, Any] = {
            "median_s": med,
            "min_s": min(times[name]),
            "runs_s": times[name],
            "peak_rss_mb": round(rss[name], 1),
            "cuda_max_allocated_mb": None if cuda[name] is None else round(cuda[name], 1),
        }
        if prepared.per_item:
            row["items_per_s"] = prepared.per_item / med if med > 0 else None
        variants[name] = row
    if prepared.reference is not None:
        ref = variants[prepared.reference]["median_s"]
        for row in variants.values():
            row["ratio_to_reference"] = row["median_s"] / ref if ref > 0 else None
    return {
        "case": case.name,
        "reference": prepared.reference,
        "settings": {**{k: v for k, v in vars(settings).items()}, **prepared.settings},
        "machine": {**machine(), "load_average_before": load_before, "load_average_after": load_average()},
        "peak_rss_per_variant": reset,
        "variants": variants,
        "metrics": metrics,
    }


def summary_lines(result: dict[str, Any]) -> list[str]:
    """Human-readable lines of one case's result."""
    m = result["machine"]
    lines = [
        f"{result['case']}: {m['cpu']} ({m['cores']} cores, {m['threads']} torch threads, torch {m['torch']}"
        f"{', GPU ' + m['gpu'] if m['gpu'] else ''}), load {m['load_average_before']} -> {m['load_average_after']}"
    ]
    for name, row in result["variants"].items():
        line = f"  {name:<24} median {row['median_s']:.4g} s  peak RSS {row['peak_rss_mb']:.0f} MB"
        if row.get("cuda_max_allocated_mb") is not None:
            line += f"  CUDA {row['cuda_max_allocated_mb']:.0f} MB"
        if row.get("items_per_s") is not None:
            line += f"  {row['items_per_s']:.3g}/s"
        if row.get("ratio_to_reference") is not None:
            line += f"  ratio {row['ratio_to_reference']:.3f} x {result['reference']}"
        lines.append(line)
    for key, value in result["metrics"].items():
        lines.append(f"  {key}: {value}")
    return lines
