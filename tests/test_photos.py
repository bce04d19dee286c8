"""Real photo buckets: photos decoded as people see them (deeplab_core/data/photos.py), each from a
file built here and checked pixel by pixel against what it must show; the network run at the model's
training scale and the CRF at a bounded resolution (deeplab_core/inference.py)."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from deeplab_core.data.codec import DecodeError
from deeplab_core.data.photos import BACKGROUND, decode_photo, to_rgb


def saved(im: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **options)
    return buf.getvalue()


def png_rgb16(rgb: np.ndarray) -> bytes:
    """A 48-bit RGB PNG (Pillow writes none), from the format's definition."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def tiff_rgb16(rgb: np.ndarray) -> bytes:
    """A 48-bit RGB baseline TIFF (little-endian, one strip), from the format's definition."""
    h, w, _ = rgb.shape
    data = rgb.astype("<u2").tobytes()
    short = lambda tag, value: struct.pack("<HHIHH", tag, 3, 1, value, 0)  # noqa: E731
    entries = 9
    bits_at = 8 + 2 + 12 * entries + 4
    ifd = b"".join([short(256, w), short(257, h), struct.pack("<HHII", 258, 3, 3, bits_at), short(259, 1),
                    short(262, 2), struct.pack("<HHII", 273, 4, 1, bits_at + 6), short(277, 3), short(278, h),
                    struct.pack("<HHII", 279, 4, 1, len(data))])
    return b"II*\x00" + struct.pack("<IH", 8, entries) + ifd + struct.pack("<I", 0) + struct.pack("<3H", 16, 16, 16) + data


GRADIENT16 = np.linspace(0, 65535, 64 * 48).round().astype(np.uint16).reshape(48, 64)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grey_spans_0_to_255_in_order_never_clipped(fmt):
    photo = decode_photo(saved(Image.fromarray(GRADIENT16), fmt))
    assert photo.mode == "I;16" and photo.pixels.shape == (48, 64, 3)
    grey = photo.pixels[..., 0].ravel()
    assert (photo.pixels == photo.pixels[..., :1]).all()
    assert grey.min() == 0 and grey.max() == 255 and (np.diff(grey.astype(int)) >= 0).all()
    np.testing.assert_array_equal(grey, np.round(GRADIENT16.ravel().astype(float) * 255 / 65535))
    assert (grey == 255).mean() < 0.01  # the clipping convert("RGB") did: 99.6% white


@pytest.mark.parametrize("encode", [png_rgb16, tiff_rgb16], ids=["PNG", "TIFF"])
def test_16_bit_rgb_spans_the_full_range_by_its_high_byte(encode):
    rgb = np.stack([GRADIENT16, GRADIENT16[::-1], np.full_like(GRADIENT16, 40000)], axis=2)
    pixels = decode_photo(encode(rgb)).pixels
    np.testing.assert_array_equal(pixels, rgb >> 8)
    assert pixels[..., 0].min() == 0 and pixels[..., 0].max() == 255 and (pixels[..., 2] == 156).all()


def test_32_bit_grey_within_16_bits_is_mapped_and_beyond_or_float_is_refused():
    within = decode_photo(saved(Image.fromarray(GRADIENT16.astype(np.int32), mode="I"), "TIFF")).pixels
    np.testing.assert_array_equal(within[..., 0], np.round(GRADIENT16.astype(float) * 255 / 65535))
    with pytest.raises(DecodeError, match=r"32-bit greyscale with values 0\.\.100000: no display range"):
        decode_photo(saved(Image.fromarray(np.array([[0, 100000]], np.int32), mode="I"), "TIFF"))
    with pytest.raises(DecodeError, match="32-bit float greyscale"):
        decode_photo(saved(Image.fromarray(np.ones((4, 4), np.float32)), "TIFF"))


def test_cmyk_ycbcr_grey_and_palette_become_the_colours_they_show():
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putpixel((0, 0), (0, 0, 0, 0))       # no ink: white
    cmyk.putpixel((1, 0), (0, 255, 255, 0))   # magenta + yellow: red
    np.testing.assert_array_equal(decode_photo(saved(cmyk, "TIFF")).pixels[0], [[255, 255, 255], [255, 0, 0]])
    ycbcr = to_rgb(Image.new("YCbCr", (1, 1), (76, 85, 255)))  # JFIF's red
    assert abs(ycbcr[0, 0].astype(int) - [255, 0, 0]).max() <= 2
    grey = decode_photo(saved(Image.fromarray(np.array([[0, 77, 255]], np.uint8)), "PNG")).pixels
    np.testing.assert_array_equal(grey[0], [[0, 0, 0], [77, 77, 77], [255, 255, 255]])
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.putpixel((1, 0), 1)
    np.testing.assert_array_equal(decode_photo(saved(palette, "PNG")).pixels[0], [[0, 0, 0], [10, 200, 30]])


def test_transparency_is_composited_over_white():
    assert BACKGROUND == (255, 255, 255)
    rgba = Image.new("RGBA", (3, 1))
    for x, value in enumerate([(200, 0, 0, 255), (200, 0, 0, 0), (200, 0, 0, 128)]):
        rgba.putpixel((x, 0), value)
    pixels = decode_photo(saved(rgba, "PNG")).pixels[0].astype(int)
    assert pixels[0].tolist() == [200, 0, 0] and pixels[1].tolist() == [255, 255, 255]
    assert abs(pixels[2] - [228, 127, 127]).max() <= 1  # half over white
    la = decode_photo(saved(Image.fromarray(np.array([[[0, 0], [0, 255]]], np.uint8), mode="LA"), "PNG")).pixels
    np.testing.assert_array_equal(la[0], [[255, 255, 255], [0, 0, 0]])
    keyed = Image.new("P", (2, 1))
    keyed.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    keyed.putpixel((1, 0), 1)
    pixels = decode_photo(saved(keyed, "PNG", transparency=0)).pixels[0]  # index 0 is transparent
    np.testing.assert_array_equal(pixels, [[255, 255, 255], [0, 0, 255]])
    keyed.info["transparency"] = 0
    pa = keyed.convert("PA")  # no writer stores PA; decoders can yield it
    assert pa.mode == "PA" and "transparency" not in pa.info
    pa = to_rgb(pa)[0]
    np.testing.assert_array_equal(pa, [[255, 255, 255], [0, 0, 255]])


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "WEBP"])
def test_multi_frame_files_give_their_first_frame_and_say_how_many(fmt):
    frames = [Image.new("RGB", (8, 6), colour) for colour in ((250, 0, 0), (0, 0, 250), (0, 250, 0))]
    options = {"lossless": True} if fmt == "WEBP" else {}
    photo = decode_photo(saved(frames[0], fmt, save_all=True, append_images=frames[1:], **options))
    assert photo.frames == 3
    assert abs(photo.pixels.astype(int) - [250, 0, 0]).max() <= 4, photo.pixels[0, 0]


# How the stored pixels relate to what is shown, per EXIF orientation (the TIFF/EXIF definition):
# the stored image is the shown one under the inverse of the transform a viewer applies.
STORED = {1: lambda a: a, 2: np.fliplr, 3: lambda a: np.rot90(a, 2), 4: np.flipud,
          5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, 1),  # shown = stored turned 90° clockwise
          7: lambda a: np.rot90(a, 2).swapaxes(0, 1), 8: lambda a: np.rot90(a, -1)}
SHOWN = np.arange(5 * 3 * 3, dtype=np.uint8).reshape(5, 3, 3) * 5  # 5 rows, 3 columns, no symmetry


def with_orientation(stored: np.ndarray, orientation: int, fmt: str = "PNG", **options) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return saved(Image.fromarray(np.ascontiguousarray(stored)), fmt, exif=exif, **options)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_shown_as_a_viewer_shows_it(orientation):
    data = with_orientation(STORED[orientation](SHOWN), orientation)
    photo = decode_photo(data)
    assert photo.orientation == orientation
    np.testing.assert_array_equal(photo.pixels, SHOWN)
    sensor = decode_photo(data, orient=False)
    np.testing.assert_array_equal(sensor.pixels, STORED[orientation](SHOWN))


def test_a_phone_jpeg_turned_by_its_exif_tag():
    shown = np.zeros((40, 30, 3), np.uint8)  # portrait: 40 rows, 30 columns
    shown[:10, :15] = (255, 0, 0)             # red in the top-left corner as seen
    photo = decode_photo(with_orientation(STORED[6](shown), 6, "JPEG", quality=95))
    assert photo.pixels.shape == (40, 30, 3) and photo.orientation == 6
    assert np.abs(photo.pixels.astype(int) - shown).mean() < 3


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_heic_and_avif_decode(fmt):
    shown = np.zeros((48, 64, 3), np.uint8)
    shown[:, 32:] = (30, 160, 220)
    photo = decode_photo(saved(Image.fromarray(shown), fmt, quality=90))
    assert photo.pixels.shape == (48, 64, 3)
    assert np.abs(photo.pixels.astype(int) - shown).mean() < 6


# --- the scale the network sees, and the CRF's bounded resolution (deeplab_core.inference) ---------

def test_inference_size_follows_the_models_training_scale():
    from deeplab_core.inference import SCALE_TOLERANCE, inference_size

    assert inference_size(3000, 4000, "auto", 500) == (375, 500)           # a phone photo, VOC model
    assert inference_size(375, 500, "auto", 500) == (375, 500)             # VOC-sized: as is
    assert inference_size(600, int(500 * SCALE_TOLERANCE), "auto", 500) == (600, 625)  # within tolerance
    assert inference_size(3000, 4000, "auto", None) == (3000, 4000)        # no recorded scale: native
    assert inference_size(3000, 4000, "native", 500) == (3000, 4000)
    assert inference_size(1000, 500, 250, 500) == (250, 125)               # long side N, down or up
    assert inference_size(100, 50, 400, None) == (400, 200)


def test_the_crf_size_is_bounded_in_pixels_with_the_aspect_kept():
    from deeplab_core.inference import bounded_size

    h, w = bounded_size((3000, 4000), 500_000)
    assert h * w <= 500_000 and h * w > 0.99 * 500_000 and abs(w / h - 4 / 3) < 0.01
    assert bounded_size((375, 500), 500_000) == (375, 500) and bounded_size((3000, 4000), None) == (3000, 4000)


def test_scaled_scores_are_the_forward_of_the_resized_image_and_masks_keep_the_image_size():
    import torch

    from deeplab_core.crf import CRFParams
    from deeplab_core.inference import coarse_scores, label_map, resize_images
    from deeplab_core.models import build_model

    torch.manual_seed(0)
    model = build_model("deeplabv3plus_mobilenetv3", 4, width_mult=0.5).eval()
    image = np.random.default_rng(0).integers(0, 256, (1, 90, 120, 3), dtype=np.uint8)
    scores = coarse_scores(model, image, size=(45, 60))
    small = resize_images(torch.from_numpy(image).permute(0, 3, 1, 2), (45, 60)).permute(0, 2, 3, 1).numpy()
    assert small.shape == (1, 45, 60, 3) and small.dtype == np.uint8
    torch.testing.assert_close(scores, coarse_scores(model, small))
    coarse = scores[0].numpy() * 20  # confident enough for the CRF to keep most labels
    full = label_map(image[0], coarse, CRFParams())
    assert full.shape == (90, 120)
    np.testing.assert_array_equal(label_map(image[0], coarse, CRFParams(), crf_max_pixels=90 * 120), full)
    bounded = label_map(image[0], coarse, CRFParams(), crf_max_pixels=45 * 60)
    assert bounded.shape == (90, 120) and (bounded == full).mean() > 0.8
