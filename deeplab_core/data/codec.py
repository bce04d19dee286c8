"""The Parquet row contract (DESIGN.md) and the decoders of its encoded columns."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
from PIL import Image

SCHEMA = pa.schema([
    ("image_id", pa.string()),
    ("split", pa.string()),
    ("image", pa.binary()),
    ("label", pa.binary()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("source", pa.string()),
    ("variant", pa.string()),
])

# Refuse decompression bombs above this, before decoding: a 100 Mpx photo, aerial or satellite tile
# passes (300 MB decoded; larger frames are segmented in tiles), a 1-gigapixel PNG of a few KB does not.
MAX_PIXELS = 120_000_000
# Our own limit, checked before decoding, stands in for Pillow's (89 Mpx warning, 179 Mpx error).
Image.MAX_IMAGE_PIXELS = None


class DecodeError(ValueError):
    """An encoded image or label that cannot be decoded; the message says why."""


def open_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open and fully decode image bytes, refusing empty, truncated, non-image and oversized input."""
    if not data:
        raise DecodeError("empty file")
    try:
        im = Image.open(io.BytesIO(data))
        if im.width * im.height > max_pixels:
            raise DecodeError(f"{im.width}x{im.height} exceeds the {max_pixels}-pixel limit")
        im.load()
    except DecodeError:
        raise
    except Image.UnidentifiedImageError:
        raise DecodeError("not an image (unrecognised format)") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad bytes
        raise DecodeError(f"not a readable image ({type(e).__name__}: {e})") from None
    return im


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Encoded image -> H×W×3 uint8 RGB."""
    im = open_image(data, max_pixels)
    return np.array(im if im.mode == "RGB" else im.convert("RGB"))  # a writable copy, as torch wants


def decode_label(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Encoded single-channel PNG (grey or palette indices) -> H×W uint8 class ids."""
    im = open_image(data, max_pixels)
    if im.mode not in ("L", "P"):
        raise DecodeError(f"label must be a single-channel or palette PNG, got mode {im.mode}")
    return np.array(im)


def encode_png(array: np.ndarray, palette: list[int] | None = None, compress_level: int = 6) -> bytes:
    """uint8 H×W (grey, or palette indices when `palette` is given) or H×W×3 RGB -> PNG bytes."""
    im = Image.fromarray(np.ascontiguousarray(array))
    if palette is not None:
        im.putpalette(palette)  # turns an 'L' image into 'P' with the indices unchanged
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def encode_jpeg(array: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_label(label: np.ndarray) -> bytes:
    """H×W uint8 train ids -> 8-bit grey PNG (fast compression: labels are mostly flat)."""
    return encode_png(label.astype(np.uint8, copy=False), compress_level=1)


def decode_row(row: dict) -> tuple[np.ndarray, np.ndarray]:
    """A Parquet row (dict) -> (image uint8 H×W×3, label uint8 H×W)."""
    image = decode_image(row["image"])
    label = decode_label(row["label"])
    if image.shape[:2] != label.shape or image.shape[:2] != (row["height"], row["width"]):
        raise DecodeError(f"{row['image_id']}: image {image.shape[:2]}, label {label.shape}, "
                          f"row says {(row['height'], row['width'])}")
    return image, label
