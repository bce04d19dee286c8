"""Photographs as people see them, for inference on buckets of real images (not training data,
whose labels were drawn on the stored pixel order).

- EXIF orientation (all 8 values) applied, so masks line up with what every viewer shows.
- 16-bit greyscale (PNG, TIFF) mapped to 8 bits over the full 16-bit range, `round(v * 255 / 65535)`,
  never clipped; 16-bit RGB (PNG, TIFF) as Pillow reads it, by its high byte (`v // 256`, also the
  full range). 32-bit integer greyscale within 0..65535 is 16-bit data and mapped so; outside it,
  and 32-bit float greyscale, there is no display range to map: refused in one line.
- CMYK, YCbCr, LAB, HSV, greyscale, 1-bit and palette images to RGB.
- Transparency (LA, RGBA, PA, a palette or grey image with a transparent colour) composited over
  white, `BACKGROUND`.
- Multi-frame files (GIF, TIFF, animated WebP): the first frame; the frame count is reported.
- HEIC/HEIF (`pillow-heif`, when installed) and AVIF, WebP, TIFF, BMP, GIF, PNG, JPEG (Pillow).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from deeplab_core.data.codec import MAX_PIXELS, DecodeError, open_image

try:  # HEIC/HEIF (what iPhones save): registered with Pillow once, on import
    from pillow_heif import register_heif_opener

    register_heif_opener()
    HEIF = True
except ImportError:  # pragma: no cover - a dependency; missing only in a hand-made environment
    HEIF = False

BACKGROUND = (255, 255, 255)
ORIENTATION_TAG = 0x0112
SIXTEEN_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N")
ALPHA_MODES = ("LA", "La", "RGBA", "RGBa", "PA")


@dataclass(frozen=True)
class Photo:
    pixels: np.ndarray  # H×W×3 uint8 RGB, in the displayed orientation unless told otherwise
    orientation: int    # the EXIF orientation found: 1 (or none) is upright, 2..8 were applied
    frames: int         # frames in the file; the first one is decoded
    mode: str           # Pillow's mode of the stored pixels ("I;16", "CMYK", "RGBA", ...)


def exif_orientation(im: Image.Image) -> int:
    value = im.getexif().get(ORIENTATION_TAG, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def to_rgb(im: Image.Image) -> np.ndarray:
    """Any decoded Pillow image -> H×W×3 uint8 RGB by the rules of this module."""
    if im.mode in SIXTEEN_BIT_GREY or im.mode == "I":
        values = np.asarray(im)
        if im.mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise DecodeError(f"32-bit greyscale with values {values.min()}..{values.max()}: no display range "
                              "to map to 8 bits (convert it to 8 or 16 bits first)")
        return _grey_to_rgb(np.round(values.astype(np.float32) * (255 / 65535)).astype(np.uint8))
    if im.mode == "F":
        raise DecodeError("32-bit float greyscale: no display range to map to 8 bits (convert it to 8 or 16 "
                          "bits first)")
    if im.mode in ALPHA_MODES or (im.mode in ("P", "L", "RGB") and "transparency" in im.info):
        flat = Image.new("RGBA", im.size, BACKGROUND + (255,))
        flat.alpha_composite(im.convert("RGBA"))
        return np.array(flat.convert("RGB"))
    return np.array(im if im.mode == "RGB" else im.convert("RGB"))  # a writable copy, as torch wants


def decode_photo(data: bytes, max_pixels: int = MAX_PIXELS, orient: bool = True) -> Photo:
    """Encoded photo -> `Photo`, its pixels as a viewer shows them (`orient=False`: in sensor order)."""
    im = open_image(data, max_pixels)
    orientation = exif_orientation(im)
    frames = getattr(im, "n_frames", 1)
    if orient and orientation != 1:
        im = ImageOps.exif_transpose(im)
    return Photo(to_rgb(im), orientation, frames, im.mode)
