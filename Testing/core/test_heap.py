"""MedDINOv3Core.heap: freed tensors of changing sizes go back to the system, and predict_volume trims its heap."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

CHURN = textwrap.dedent(
    """
    import sys, torch
    from MedDINOv3Core.heap import release_free_memory
    def rss():
        return next(int(l.split()[1]) // 1024 for l in open("/proc/self/status") if l.startswith("VmRSS"))
    torch.set_num_threads(1)
    big = torch.ones(4 * 2**20)  # a 16 MB block gets its own mapping; freeing it raises the mmap threshold
    del big  # so the blocks below come from the heap
    base, kept, freed = rss(), [], []
    for i in range(48):  # 4-6 MB tensors, each followed by a small result that is kept: the heap cannot shrink
        freed.append(torch.ones((4 + i % 3) * 262144))
        kept.append(torch.ones(16384))
    del freed
    if sys.argv[1] == "trim":
        assert release_free_memory()
    print(rss() - base, sum(k.numel() for k in kept) * 4 // 2**20)
    """
)


def _growth(mode: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True).stdout
    grown, kept = (int(v) for v in out.split())
    return grown, kept


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim (Linux)")
def test_freed_blocks_of_changing_sizes_return_to_the_system():
    grown, kept = _growth("trim")
    assert grown <= kept + 16, f"resident memory grew by {grown} MB while {kept} MB were kept"
    untrimmed, _ = _growth("none")  # the control: glibc keeps the pages of the freed blocks (240 MB) in its heap
    assert untrimmed > kept + 160, f"without the trim resident memory grew by only {untrimmed} MB"


def test_crossed_marks_one_batch_every_32_slices():
    from MedDINOv3Core.heap import crossed

    batches = [(k, min(100, k + 3)) for k in range(0, 100, 3)]
    assert [b for b in batches if crossed(*b)] == [(30, 33), (63, 66), (93, 96)]


def test_predict_volume_trims_the_heap_every_32_slices(monkeypatch, tiny_vit_config):
    import MedDINOv3Core.inference as inference
    from MedDINOv3Core.data.preprocess import PreprocessConfig
    from MedDINOv3Core.data.volume import Volume
    from MedDINOv3Core.models.segmenter import Segmenter, SegmenterConfig
    from MedDINOv3Core.segmentation_cards import new_segmentation_card

    calls = []
    monkeypatch.setattr(inference, "release_free_memory", lambda: calls.append(True))
    card = new_segmentation_card(
        tiny_vit_config, ["a"], PreprocessConfig.meddinov3_demo(), inference.InferenceConfig(batch_size=4)
    )
    model = Segmenter(tiny_vit_config, SegmenterConfig(2)).eval()
    volume = Volume(np.zeros((70, 16, 16), np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3).ravel())
    inference.predict_volume(model, card, volume, device="cpu")
    assert len(calls) == 2  # slices 32 and 64
