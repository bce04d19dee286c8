"""Hostile input: fuzzed configs and encoded images/labels fail only with the documented clear errors,
decompression bombs are refused by the pixel limit, and a pickled checkpoint never runs code."""
from __future__ import annotations

import io
import os
import pickle
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from deeplab_core.checkpoint import MODEL_FILE, load_model, save_model
from deeplab_core.data.codec import MAX_PIXELS, DecodeError, decode_image, decode_label, encode_label, encode_png
from deeplab_core.models import build_model
from pipelines.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEYS = ["data.uri", "data.crop_size", "data.scale_range", "data.flip", "model.name", "model.options",
        "model.msc_scales", "train.iterations", "train.batch_size", "train.base_lr", "train.lr_policy",
        "train.optimizer", "ray.num_workers", "ray.use_gpu", "ray.placement_strategy", "tracking.experiment",
        "train", "data.bogus", "nope", "", "..", "ray.num_workers.deeper"]
YAML_VALUES = st.one_of(st.text(max_size=20), st.integers(-10**12, 10**12).map(str),
                        st.floats(allow_nan=True).map(str), st.sampled_from(
                            ["[1, 2]", "{a: 1}", "null", "true", "[", "{", "!!python/object:os.system ls", "*x",
                             "&a [*a]", "1e309", "-1", "0", "0.5", "[0.5, 1.5]", "[2, 1]", "deeplabv3_resnet101"]))


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(KEYS) | st.text(max_size=12), YAML_VALUES), max_size=4))
def test_fuzzed_overrides_are_accepted_or_refused_with_a_config_error(pairs):
    overrides = [f"{k}={v}" for k, v in pairs]
    try:
        cfg = load_config(str(ROOT / "configs" / "synthetic_tiny.yaml"), overrides)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e), "a config error is one line"
        return
    assert cfg.train.iterations >= 1 and cfg.ray.num_workers >= 1 and cfg.train.batch_size >= 1


@FUZZ
@given(st.text(max_size=200))
def test_fuzzed_yaml_files_are_accepted_or_refused_with_a_config_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "fuzz.yaml"
    path.write_text(text)
    try:
        load_config(str(path))
    except ConfigError as e:
        assert "\n" not in str(e)


def _valid_png() -> bytes:
    return encode_label(np.arange(48 * 64, dtype=np.uint8).reshape(48, 64) % 21)


@FUZZ
@given(st.binary(max_size=2048) | st.builds(lambda cut, flip: _mutate(_valid_png(), cut, flip),
                                           st.integers(0, 400), st.integers(0, 400)))
def test_fuzzed_bytes_decode_or_raise_decode_error(data):
    for decoder in (decode_image, decode_label):
        try:
            out = decoder(data)
        except DecodeError as e:
            assert "\n" not in str(e)
        else:
            assert out.dtype == np.uint8 and out.ndim in (2, 3)


def _mutate(data: bytes, cut: int, flip: int) -> bytes:
    """A real PNG, truncated at `cut` from the end and with one byte changed at `flip`."""
    data = bytearray(data[: max(1, len(data) - cut)])
    data[flip % len(data)] ^= 0x5A
    return bytes(data)


def _png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width×height zeros: tiny on disk, huge once decoded."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (len(body).to_bytes(4, "big") + kind + body
                + zlib.crc32(kind + body).to_bytes(4, "big"))
    row = b"\x00" + bytes((width + 7) // 8)
    compressor = zlib.compressobj(9)
    raw = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_by_the_pixel_limit():
    bomb = _png_bomb(20_000, 20_000)  # 400 Mpx
    assert len(bomb) < 100_000
    for decoder in (decode_image, decode_label):
        with pytest.raises(DecodeError, match="exceeds the 120000000-pixel limit"):
            decoder(bomb)
    with pytest.raises(DecodeError, match="exceeds the 1000-pixel limit"):
        decode_image(encode_png(np.zeros((40, 40, 3), np.uint8)), max_pixels=1000)
    assert MAX_PIXELS < 20_000 * 20_000


class _Payload:
    """Unpickling this runs a command: what a malicious checkpoint would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickled_checkpoint_is_refused_and_runs_nothing(tmp_path):
    model = build_model("deeplabv2_mobilenetv3_aspp_s", 3, width_mult=0.25)
    save_model(tmp_path, model, {"name": "deeplabv2_mobilenetv3_aspp_s", "num_classes": 3,
                                 "options": {"width_mult": 0.25}})
    assert load_model(tmp_path)[1]["num_classes"] == 3  # the genuine checkpoint loads
    marker = tmp_path / "pwned"
    state = torch.load(tmp_path / MODEL_FILE, weights_only=True)
    state["extra"] = _Payload(str(marker))
    torch.save(state, tmp_path / MODEL_FILE)
    with pytest.raises(ValueError, match="refused, not a weights-only state dict"):
        load_model(tmp_path)
    assert not marker.exists(), "loading the checkpoint ran its payload"
    with open(tmp_path / MODEL_FILE, "wb") as f:  # a bare pickle, not even a torch archive
        pickle.dump(_Payload(str(marker)), f)
    with pytest.raises(ValueError, match="refused"):
        load_model(tmp_path)
    assert not marker.exists()


def test_yaml_configs_never_construct_python_objects(tmp_path):
    path = tmp_path / "evil.yaml"
    marker = tmp_path / "pwned"
    path.write_text(yaml.dump({"data": {"uri": "x"}}) + f"model: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(path))
    assert not marker.exists()


def test_decoders_refuse_wrong_label_modes():
    rgb = io.BytesIO()
    Image.new("RGB", (8, 8)).save(rgb, format="PNG")
    with pytest.raises(DecodeError, match="single-channel or palette"):
        decode_label(rgb.getvalue())


@pytest.mark.parametrize("text, value", [("1e-3", 1e-3), ("1E4", 1e4), (".5", 0.5), ("2.5e-4", 2.5e-4),
                                         ("1_000", 1000.0), ("3", 3.0), ("-1.5e+2", -150.0)])
def test_numbers_as_users_type_them_are_accepted_in_set_and_yaml(tmp_path, text, value):
    base = str(ROOT / "configs" / "synthetic_tiny.yaml")
    assert load_config(base, [f"train.momentum={text}"]).train.momentum == value
    path = tmp_path / "cfg.yaml"
    path.write_text(Path(base).read_text().replace("\ntrain:\n", f"\ntrain:\n  momentum: {text}\n", 1))
    assert load_config(str(path)).train.momentum == value
    if value == int(value) and value >= 1:
        assert load_config(base, [f"train.iterations={text}"]).train.iterations == int(value)


@pytest.mark.parametrize("text, message", [("abc", "train.base_lr must be a number, got 'abc'"),
                                           ("1e-3x", "train.base_lr must be a number, got '1e-3x'"),
                                           ("nan", "train.base_lr must be a number, got 'nan'"),
                                           ("1e999", "train.base_lr must be a number, got '1e999'"),
                                           ("true", "train.base_lr must be a number, got True")])
def test_non_numbers_are_refused_in_one_line(text, message):
    with pytest.raises(ConfigError) as e:
        load_config(str(ROOT / "configs" / "synthetic_tiny.yaml"), [f"train.base_lr={text}"])
    assert str(e.value) == message
    with pytest.raises(ConfigError, match="train.iterations must be an integer, got 2.5"):
        load_config(str(ROOT / "configs" / "synthetic_tiny.yaml"), ["train.iterations=2.5"])
