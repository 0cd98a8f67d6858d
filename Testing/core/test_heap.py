"""MedDINOv3Core.heap: with a fixed mmap threshold, freed tensors of changing sizes go back to the system."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

CHURN = textwrap.dedent(
    """
    import random, sys, torch
    if sys.argv[1] == "policy":
        from MedDINOv3Core.heap import map_large_blocks
        assert map_large_blocks()
    def rss():
        return next(int(l.split()[1]) // 1024 for l in open("/proc/self/status") if l.startswith("VmRSS"))
    rng, kept = random.Random(0), []
    torch.set_num_threads(1)
    base = rss()
    for _ in range(60):  # 1-16 MB tensors of changing sizes, freed, between small results that are kept
        a = torch.ones(rng.randint(1, 8) * 262144)
        b = torch.ones(rng.randint(1, 8) * 262144 + 1000)
        kept.append(torch.ones(rng.randint(64, 256) * 1024))
        del a
        c = torch.ones(rng.randint(1, 16) * 262144)
        del b, c
    print(rss() - base, sum(k.numel() for k in kept) * 4 // 2**20)
    """
)


def _growth(mode: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True).stdout
    grown, kept = (int(v) for v in out.split())
    return grown, kept


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt (Linux)")
def test_freed_blocks_of_changing_sizes_return_to_the_system():
    grown, kept = _growth("policy")
    assert grown < kept + 32, f"resident memory grew by {grown} MB while {kept} MB were kept"
    default, _ = _growth("default")  # the control: glibc's own policy keeps hundreds of MB of freed blocks
    assert default > grown + 60


def test_the_command_line_sets_the_policy(monkeypatch):
    import training.cli as cli

    calls = []
    monkeypatch.setattr(cli, "map_large_blocks", lambda: calls.append(True))
    assert cli.main(["models"]) == 0
    assert calls == [True]
