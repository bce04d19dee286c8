"""The PyTorch dense CRF against pydensecrf: the same labels, the same Q iteration by iteration, the
same errors; batching changes nothing. Inputs: synthetic scenes with coarse, blurred probabilities
as a DCNN gives them (`crf_scene`).

Measured on this machine (240×320 scenes): argmax agreement 100.000% of all pixels and of the
1,749-2,588 pixels the CRF changed, for 21 and 6 labels and all three parameter sets; max |ΔQ|
<= 7.8e-7 after 10 iterations."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from deeplab_core.crf import CRF_PRESETS, CRFParams, dense_crf, pydensecrf_model
from deeplab_core.crf import dense_crf_batch
from deeplab_core.data.synth import crf_scene

PARAMS = {"resnet101_voc": CRF_PRESETS["resnet101_voc"], "vgg16_largefov_voc": CRF_PRESETS["vgg16_largefov_voc"],
          "after": CRFParams(bi_w=5, bi_xy_std=50, bi_rgb_std=4, pos_w=3, pos_xy_std=2, normalization="after")}


@pytest.fixture(scope="module", params=[21, 6], ids=["21labels", "6labels"])
def scene(request):
    image, probs, _ = crf_scene(1, request.param, 240, 320)
    return image, probs


@pytest.mark.parametrize("name", list(PARAMS))
def test_labels_agree_with_pydensecrf(scene, name):
    image, probs = scene
    params = PARAMS[name]
    reference = dense_crf(image, probs, params)
    ours = dense_crf(image, probs, params, backend="torch")
    assert ours.dtype == np.float32 and ours.shape == probs.shape
    same = reference.argmax(0) == ours.argmax(0)
    changed = reference.argmax(0) != probs.argmax(0)
    assert changed.sum() >= 1000  # the CRF did work here (measured 1,749-2,588 pixels)
    assert same.mean() >= 0.999  # measured 1.0
    assert same[changed].mean() >= 0.99  # measured 1.0
    assert np.abs(reference - ours).max() < 1e-5  # measured <= 7.8e-7


def test_q_follows_pydensecrf_iteration_by_iteration(scene):
    image, probs = scene
    params = PARAMS["resnet101_voc"]
    crf = pydensecrf_model(image, probs, params)
    q, tmp1, tmp2 = crf.startInference()
    done = 0
    for iterations in (1, 2, 10):
        for _ in range(iterations - done):
            crf.stepInference(q, tmp1, tmp2)
        done = iterations
        reference = np.asarray(q, np.float32).reshape(probs.shape)
        ours = dense_crf(image, probs, dataclasses.replace(params, iterations=iterations), backend="torch")
        assert np.abs(reference - ours).max() < 1e-5, iterations  # measured <= 7.8e-7


def test_normalization_is_honoured_by_both_backends():
    image, probs, _ = crf_scene(2, 6, 120, 160)
    symmetric = CRFParams(bi_w=10, pos_w=6)
    after = dataclasses.replace(symmetric, normalization="after")
    for backend in ("pydensecrf", "torch"):
        assert np.abs(dense_crf(image, probs, symmetric, backend) - dense_crf(image, probs, after, backend)).max() > 1e-3
    np.testing.assert_allclose(dense_crf(image, probs, after, "torch"), dense_crf(image, probs, after), atol=1e-5)


def test_a_batch_equals_images_one_by_one_whatever_the_grouping():
    scenes = [crf_scene(seed, 6, 96, 128) for seed in range(3)] + [crf_scene(9, 6, 64, 96)]
    images, probs = [s[0] for s in scenes], [s[1] for s in scenes]
    params = PARAMS["resnet101_voc"]
    singles = [dense_crf(im, p, params, backend="torch") for im, p in zip(images, probs)]

    same_size = dense_crf_batch(torch.from_numpy(np.stack(images[:3])), torch.from_numpy(np.stack(probs[:3])), params)
    assert isinstance(same_size, torch.Tensor) and same_size.shape == (3, 6, 96, 128)
    mixed = dense_crf_batch(images, probs, params)  # a list of sizes: one lattice for all
    grouped = dense_crf_batch(images, probs, params, max_pixels=96 * 128 * 2)  # three calls
    for k, single in enumerate(singles):
        if k < 3:
            np.testing.assert_allclose(same_size[k].numpy(), single, atol=1e-5)
        np.testing.assert_allclose(mixed[k].numpy(), single, atol=1e-5)
        np.testing.assert_allclose(grouped[k].numpy(), single, atol=1e-5)


def test_tensors_stay_tensors_on_their_device():
    image, probs, _ = crf_scene(3, 6, 64, 64)
    out = dense_crf(torch.from_numpy(image), torch.from_numpy(probs), backend="torch")
    assert isinstance(out, torch.Tensor) and out.device == torch.device("cpu") and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), dense_crf(image, probs), atol=1e-5)
    # read-only and reversed numpy views (Ray's object store, flipped images) are taken as they are
    flipped = np.ascontiguousarray(image[:, ::-1])[:, ::-1]
    flipped.setflags(write=False)
    np.testing.assert_allclose(dense_crf(flipped, probs[:, :, ::-1][:, :, ::-1], backend="torch"),
                               dense_crf(image, probs), atol=1e-5)


@pytest.mark.parametrize("backend", ["pydensecrf", "torch"])
def test_bad_input_is_the_same_one_line_error_for_both_backends(backend):
    image, probs, _ = crf_scene(4, 6, 32, 32)
    nan = probs.copy()
    nan[0, 3, 3] = np.nan
    cases = [((image.astype(np.float32), probs), "image must be H×W×3 uint8"),
             ((image[..., :2], probs), "image must be H×W×3 uint8"),
             ((image, probs[:, :20]), "matching the image"),
             ((image, (probs * 100).astype(np.int64)), "floating point"),
             ((image, probs[:1]), ">= 2 classes"),
             ((image, nan), "NaN or infinite")]
    for (im, p), message in cases:
        with pytest.raises(ValueError, match=message) as e:
            dense_crf(im, p, backend=backend)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="must be > 0"):
        CRFParams(bi_rgb_std=0)
    with pytest.raises(ValueError, match="normalization must be one of symmetric, after"):
        CRFParams(normalization="before")


def test_unknown_backend_is_refused():
    image, probs, _ = crf_scene(4, 6, 32, 32)
    with pytest.raises(ValueError, match="valid: pydensecrf, torch"):
        dense_crf(image, probs, backend="cuda")
