"""Frames too large for one pass (deeplab_core.inference): windows, blended scores, the CRF by tiles,
and full-size maps made band by band, never whole."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deeplab_core.crf import CRFParams
from deeplab_core.data.labels import VOC
from deeplab_core.inference import (Tiling, coarse_scores, crf_tiles, label_map, most_likely, tile_windows,
                                    tiled_coarse_scores)
from deeplab_core.inference import resample as resample_module
from deeplab_core.inference.resample import resample
from deeplab_core.models import build_model


@pytest.mark.parametrize("size", [(50, 70), (5, 4), (13, 9)], ids=["up", "down", "mixed"])
def test_a_resampled_window_is_that_window_of_the_bilinear_resize(size):
    scores = torch.randn(2, 3, 7, 9)
    full = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
    for rows, cols in (((0, size[0]), (0, size[1])), ((1, size[0] - 1), (2, size[1])), ((size[0] - 1, size[0]), (0, 1))):
        torch.testing.assert_close(resample(scores, size, rows, cols), full[..., rows[0]:rows[1], cols[0]:cols[1]],
                                   atol=1e-5, rtol=0)


def test_masks_band_by_band_equal_the_full_size_maps(monkeypatch):
    """Labels, confidence (255 × the top probability) and entropy (255 × H / log C) of the bilinear
    resize, made four rows at a time, equal those of the full-size map."""
    scores = torch.randn(2, 5, 6, 8) * 3
    probs = F.interpolate(scores, size=(45, 61), mode="bilinear", align_corners=False).softmax(1)
    entropy = -(probs * probs.log()).sum(1) / np.log(5)
    monkeypatch.setattr("deeplab_core.inference.masks.BAND_VALUES", 2 * 5 * 61 * 4)
    monkeypatch.setattr(resample_module, "BAND_VALUES", 2 * 5 * 61 * 4)
    got = most_likely(scores, (45, 61), softmax=True)
    assert got.labels.dtype == np.uint8 and got.labels.shape == (2, 45, 61)
    assert np.mean(got.labels == probs.argmax(1).numpy()) > 0.999  # float rounding may flip a near-tie
    assert np.abs(got.confidence.astype(int) - (255 * probs.max(1).values).round().numpy()).max() <= 1
    assert np.abs(got.entropy.astype(int) - (255 * entropy).round().numpy()).max() <= 1


def test_windows_cover_the_frame_and_crf_tiles_partition_it():
    height, width, tile, overlap = 1000, 2500, 1024, 256
    covered = np.zeros((height, width), np.int32)
    windows = tile_windows(height, width, tile, overlap)
    for y, x, h, w in windows:
        assert (h, w) == (1000, 1024) and y + h <= height and x + w <= width
        covered[y:y + h, x:x + w] += 1
    xs = sorted({x for _, x, _, _ in windows})
    assert covered.min() >= 1 and xs[0] == 0 and xs[-1] + 1024 == width
    assert all(b - a <= tile - overlap for a, b in zip(xs, xs[1:]))  # neighbours overlap by at least `overlap`
    cores = np.zeros((height, width), np.int32)
    for (y0, y1, x0, x1), (py0, py1, px0, px1) in crf_tiles(height, width, tile):
        assert y1 - y0 <= tile and x1 - x0 <= tile
        assert (py0, px0) == (max(0, y0 - tile // 8), max(0, x0 - tile // 8))
        assert (py1, px1) == (min(height, y1 + tile // 8), min(width, x1 + tile // 8))
        cores[y0:y1, x0:x1] += 1
    assert (cores == 1).all()


def test_tiling_says_which_frames_are_cut_and_refuses_bad_values():
    tiling = Tiling(tile=512, overlap=128, above=1_000_000)
    assert tiling.tile_for((900, 1000)) is None and tiling.tile_for((1000, 1001)) == 512
    assert Tiling(tile=512, overlap=0, above=None).tile_for((400, 600)) == 512
    assert Tiling(tile=512, above=None).tile_for((400, 500)) is None  # fits in one tile
    assert Tiling(tile=1024).after_out_of_memory((120, 160)) == Tiling(128, 32, above=None)
    for bad, message in (({"tile": 16}, "at least 32"), ({"tile": 256, "overlap": 256}, "under the tile"),
                         ({"above": 0}, "at least 1 pixel")):
        with pytest.raises(ValueError, match=message):
            Tiling(**bad)


@pytest.fixture(scope="module")
def frame_and_model():
    """A 384×768 frame of flat discs and a random VOC model whose masks show several classes."""
    torch.manual_seed(3)
    model = build_model("deeplabv3plus_mobilenetv3", VOC.num_classes, width_mult=0.5).eval()
    classifier = [m for m in model.classifier.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        classifier.weight.normal_(0, 30)
    rng = np.random.default_rng(0)
    height, width = 384, 768
    frame = np.full((height, width, 3), 100, np.uint8)
    yy, xx = np.ogrid[:height, :width]
    for _ in range(40):
        y, x, r = rng.integers(0, height), rng.integers(0, width), rng.integers(height // 30, height // 5)
        frame[(yy - y) ** 2 + (xx - x) ** 2 < r * r] = rng.integers(0, 255, 3)
    return np.clip(frame + rng.normal(0, 8, frame.shape), 0, 255).astype(np.uint8), model


@pytest.mark.parametrize("crf", [None, CRFParams()], ids=["no-crf", "crf"])
def test_tiled_and_whole_frames_agree(frame_and_model, crf):
    """The frame in two windows (tile = half its width, overlap a quarter of the tile, as 2048×1024 in
    1024 tiles overlapping by 256) against one pass: at least 99% of the pixels equal, with and
    without the CRF (by tiles with margins, at full resolution)."""
    frame, model = frame_and_model
    whole = coarse_scores(model, frame[None])[0].numpy()
    tiled = tiled_coarse_scores(model, frame, "cpu", 384, 96)
    assert tiled.shape == whole.shape  # the network's own grid here
    a = label_map(frame, whole, crf, crf_max_pixels=10**7)
    b = label_map(frame, tiled.numpy(), crf, crf_max_pixels=10**7, crf_tile=384 if crf else None)
    assert a.shape == b.shape == frame.shape[:2] and len(np.unique(a)) >= 5
    assert np.mean(a == b) >= 0.99


def test_the_mask_of_a_large_frame_never_holds_its_full_size_scores():
    """The mask of a 3000×3000 frame from 21 classes of coarse scores, with the CRF refining a bounded
    copy: a full-size C×H×W float array alone would be 756 MB; the process grows by far less."""
    code = textwrap.dedent("""
        import resource, numpy as np, torch
        from deeplab_core.crf import CRFParams
        from deeplab_core.inference import label_map
        frame = np.random.default_rng(0).integers(0, 255, (3000, 3000, 3), dtype=np.uint8)
        coarse = np.random.default_rng(1).normal(0, 3, (21, 375, 375)).astype(np.float32)
        label_map(frame[:64, :64], coarse[:, :8, :8], CRFParams(iterations=1), "torch", 10_000)  # warm up
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for crf in (None, CRFParams(iterations=1)):
            mask = label_map(frame, coarse, crf, "torch", crf_max_pixels=250_000)
            assert mask.shape == (3000, 3000)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    grown_mb = int(result.stdout.split()[-1])
    assert grown_mb < 300, f"grew by {grown_mb} MB"
