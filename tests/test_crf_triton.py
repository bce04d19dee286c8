"""The CRF's fast path on CUDA devices (`deeplab_core.crf.triton_mean_field`) without a GPU: its Triton
kernels run under Triton's interpreter (TRITON_INTERPRET=1) on CPU tensors, and must give the
reference's Q (`torch_backend.reference_mean_field`) and pydensecrf's labels, bit-identically from run
to run. The interpreter costs milliseconds per program, so the scenes are small.

Measured on this machine (24×32 and 20×28 scenes, 6 labels, 10 iterations): max |ΔQ| 2.4e-7 against
the reference, labels 100% equal."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from deeplab_core.crf import CRF_PRESETS, CRFParams, choose_mean_field, dense_crf, dense_crf_batch
from deeplab_core.data.synth import crf_scene

PARAMS = {"resnet101_voc": CRF_PRESETS["resnet101_voc"],
          "after": CRFParams(bi_w=5, bi_xy_std=50, bi_rgb_std=4, pos_w=3, pos_xy_std=2, normalization="after")}


@pytest.fixture(scope="module")
def interpreted():
    """The kernels, interpreted: conftest sets TRITON_INTERPRET=1 before Triton is imported."""
    from triton.runtime.interpreter import InterpretedFunction

    import deeplab_core.crf.triton_mean_field as kernels

    assert isinstance(kernels._splat, InterpretedFunction), "Triton was imported before TRITON_INTERPRET=1"
    return kernels


@pytest.fixture(scope="module")
def scenes():
    """Two images of different sizes in one call: one lattice holds both."""
    return [crf_scene(seed, 6, height, width)[:2] for seed, (height, width) in ((1, (24, 32)), (2, (20, 28)))]


@pytest.mark.parametrize("name", list(PARAMS))
def test_triton_mean_field_gives_the_reference_q(interpreted, scenes, name):
    params = PARAMS[name]
    images = [torch.from_numpy(image) for image, _ in scenes]
    probs = [torch.from_numpy(prob) for _, prob in scenes]
    reference = dense_crf_batch(images, probs, params, mean_field="reference")
    fast = dense_crf_batch(images, probs, params, mean_field="triton")
    for (image, prob), ours, theirs in zip(scenes, fast, reference):
        assert ours.shape == theirs.shape and ours.dtype == torch.float32
        assert (ours - theirs).abs().max() <= 1e-5  # the bound 1e-4; measured 2.4e-7
        assert torch.equal(ours.argmax(0), theirs.argmax(0))
        pydensecrf_labels = dense_crf(image, prob, params).argmax(0)
        assert np.mean(ours.argmax(0).numpy() == pydensecrf_labels) >= 0.999


def test_triton_mean_field_is_deterministic(interpreted, scenes):
    params = dataclasses.replace(PARAMS["resnet101_voc"], iterations=3)
    image, prob = (torch.from_numpy(a) for a in scenes[0])
    first, second = (dense_crf_batch([image], [prob], params, mean_field="triton")[0] for _ in range(2))
    assert torch.equal(first, second)
    assert not torch.equal(first, prob)  # the CRF did change Q


def test_the_mean_field_is_chosen_by_device(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert choose_mean_field(torch.device("cpu")) == "reference"
    assert choose_mean_field(torch.device("cuda", 0)) == "triton"  # the fast path by itself on CUDA
    assert choose_mean_field(torch.device("cuda"), "reference") == "reference"
    with pytest.raises(ValueError, match="runs on CUDA devices .* not on cpu"):
        choose_mean_field(torch.device("cpu"), "triton")
    with pytest.raises(ValueError, match="valid: auto, reference, triton"):
        choose_mean_field(torch.device("cpu"), "fast")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert choose_mean_field(torch.device("cpu"), "triton") == "triton"
