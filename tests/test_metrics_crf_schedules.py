from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from deeplab_core.crf import CRF_PRESETS, CRFParams, dense_crf
from deeplab_core.metrics import ConfusionMatrix, TrimapIoU, boundary_distance
from deeplab_core.schedules import lr_scheduler, poly_lr, step_lr


def brute_force(pred, gt, num_classes):
    """Per-class IoU by explicit pixel sets, classes absent from both left out (NaN)."""
    iou = []
    for c in range(num_classes):
        valid = gt != 255
        inter = np.sum((pred == c) & (gt == c) & valid)
        union = np.sum(((pred == c) | (gt == c)) & valid)
        iou.append(inter / union if union else np.nan)
    acc = np.sum((pred == gt) & (gt != 255)) / np.sum(gt != 255)
    return np.array(iou), acc


def test_confusion_matrix_equals_brute_force_with_ignore_pixels():
    rng = np.random.default_rng(0)
    for trial in range(20):
        c = int(rng.integers(2, 8))
        gt = rng.integers(0, c, size=(23, 31)).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.2] = 255
        if trial % 3 == 0:
            gt[gt == c - 1] = 0  # a class absent from ground truth...
        pred = rng.integers(0, c - (trial % 3 == 0), size=gt.shape)  # ...and from prediction
        cm = ConfusionMatrix(c).update(pred, gt)
        iou, acc = brute_force(pred, gt, c)
        np.testing.assert_allclose(cm.iou(), iou, equal_nan=True)
        assert cm.miou() == pytest.approx(np.nanmean(iou)) and cm.pixel_accuracy() == pytest.approx(acc)
        assert cm.matrix.sum() == np.sum(gt != 255)


def test_merged_accumulators_equal_one_over_all_data():
    rng = np.random.default_rng(1)
    pairs = [(rng.integers(0, 5, (17, 19)), rng.choice([0, 1, 2, 3, 4, 255], (17, 19))) for _ in range(6)]
    whole = ConfusionMatrix(5)
    parts = [ConfusionMatrix(5), ConfusionMatrix(5)]
    for i, (p, g) in enumerate(pairs):
        whole.update(p, g)
        parts[i % 2].update(p, g)
    assert np.array_equal((parts[0] + parts[1]).matrix, whole.matrix)
    t_whole, t_parts = TrimapIoU(5, (1, 3)), [TrimapIoU(5, (1, 3)), TrimapIoU(5, (1, 3))]
    for i, (p, g) in enumerate(pairs):
        t_whole.update(p, g)
        t_parts[i % 2].update(p, g)
    assert (t_parts[0] + t_parts[1]).curve() == t_whole.curve()


def test_size_mismatch_is_refused():
    with pytest.raises(ValueError, match="differ in size"):
        ConfusionMatrix(3).update(np.zeros((4, 4)), np.zeros((4, 5)))


def test_trimap_iou_hand_computed():
    gt = np.zeros((10, 10), np.uint8)
    gt[:, 5:] = 1           # boundary between columns 4 and 5
    pred = np.zeros_like(gt)
    pred[:, 6:] = 1         # predicted boundary one pixel off
    curve = TrimapIoU(2, (1, 2)).update(pred, gt).curve()
    # w=1: columns 3..6 -> IoU0 = 20/30, IoU1 = 10/20; w=2: columns 2..7 -> IoU0 = 30/40, IoU1 = 20/30
    assert curve[1] == pytest.approx((20 / 30 + 10 / 20) / 2)
    assert curve[2] == pytest.approx((30 / 40 + 20 / 30) / 2)
    assert np.array_equal(boundary_distance(gt)[0, 3:7], [1, 0, 0, 1])


def test_void_pixels_count_as_boundary():
    gt = np.zeros((5, 9), np.uint8)
    gt[:, 4] = 255
    assert boundary_distance(gt)[2].tolist() == [3, 2, 1, 0, 0, 0, 1, 2, 3]


def disc_case(size=80, shift=6):
    """A sharp disc on a flat background, and class probabilities that are blurred and too big."""
    yy, xx = np.mgrid[:size, :size]
    truth = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2).astype(np.uint8)
    image = np.where(truth[..., None] == 1, [200, 40, 40], [40, 90, 200]).astype(np.uint8)
    swollen = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4 + shift) ** 2).astype(np.float64)
    fg = np.clip(gaussian_filter(swollen, 4), 0.05, 0.95)
    return image, np.stack([1 - fg, fg]).astype(np.float32), truth


def test_dense_crf_raises_boundary_trimap_iou():
    image, probs, truth = disc_case()
    refined = dense_crf(image, probs, CRFParams(bi_w=10, bi_xy_std=20, bi_rgb_std=10, pos_w=3, pos_xy_std=1))
    assert refined.shape == probs.shape and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(0), 1, atol=1e-4)
    before = TrimapIoU(2, (3,)).update(probs.argmax(0), truth).curve()[3]
    after = TrimapIoU(2, (3,)).update(refined.argmax(0), truth).curve()[3]
    assert after > before + 0.2


def test_dense_crf_accepts_non_contiguous_float64_and_refuses_bad_input():
    image, probs, _ = disc_case(40)
    out = dense_crf(image[:, ::-1][:, ::-1], probs.astype(np.float64)[:, :, ::-1][:, :, ::-1])
    assert out.shape == probs.shape
    with pytest.raises(ValueError, match="image must be H×W×3 uint8"):
        dense_crf(image.astype(np.float32), probs)
    with pytest.raises(ValueError, match="matching the image"):
        dense_crf(image, probs[:, :20])
    with pytest.raises(ValueError, match="floating point"):
        dense_crf(image, (probs * 100).astype(np.int64))
    with pytest.raises(ValueError, match="bi_w must be a finite number"):
        CRFParams(bi_w=-1)


def test_released_crf_defaults():
    p = CRFParams()
    assert (p.bi_w, p.bi_xy_std, p.bi_rgb_std, p.pos_w, p.pos_xy_std, p.iterations) == (4, 67, 3, 3, 1, 10)
    assert CRF_PRESETS["resnet101_voc"] == p


def test_poly_and_step_schedules():
    assert poly_lr(1e-3, 0, 100) == 1e-3 and poly_lr(1e-3, 100, 100) == 0
    assert poly_lr(1e-3, 50, 100) == pytest.approx(1e-3 * 0.5 ** 0.9)
    assert step_lr(1.0, 2000, 2000) == pytest.approx(0.1) and step_lr(1.0, 1999, 2000) == 1.0
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD([{"params": params[:1], "lr": 1.0}, {"params": params[1:], "lr": 10.0}], lr=1.0)
    sched = lr_scheduler(opt, "poly", 10)
    for _ in range(5):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5 ** 0.9, 10 * 0.5 ** 0.9])
    with pytest.raises(ValueError, match="valid: poly, step"):
        lr_scheduler(opt, "cosine", 10)
