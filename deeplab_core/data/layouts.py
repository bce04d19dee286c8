"""Readers of the raw PASCAL VOC 2012 (+SBD) and Cityscapes trees, on any pyarrow filesystem.

`find_examples` lists what a tree holds per split; `example_rows` turns one example into Parquet
rows (train ids, the original image bytes, optional augmented copies) or raises `BadExample`.
"""
from __future__ import annotations

import io
import posixpath
import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs
from scipy.io import loadmat

from .codec import DecodeError, encode_label, encode_png, open_image
from .labels import IGNORE_INDEX, VOC, cityscapes_to_train_ids
from .transforms import random_scale_flip

DATASETS = ("voc", "cityscapes")


class LayoutError(ValueError):
    """The root is missing or not laid out as the dataset's official release."""


class BadExample(ValueError):
    """One example cannot be converted; the message names the file and the reason."""


@dataclass(frozen=True)
class RawExample:
    image_id: str
    split: str
    image: str        # path on the filesystem
    label: str
    label_format: str  # "index_png" (VOC), "sbd_mat", "cityscapes_ids"


def _is_dir(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.Directory


def _read_lines(fs: pafs.FileSystem, path: str) -> list[str]:
    with fs.open_input_stream(path) as f:
        return [ln.strip() for ln in f.read().decode().splitlines() if ln.strip()]


def _voc_dir(fs, root: str) -> str:
    for candidate in (posixpath.join(root, "VOCdevkit", "VOC2012"), posixpath.join(root, "VOC2012"), root):
        if _is_dir(fs, posixpath.join(candidate, "ImageSets", "Segmentation")):
            return candidate
    raise LayoutError(f"{root}: no VOCdevkit/VOC2012/ImageSets/Segmentation (expected the VOC 2012 layout)")


def find_voc(fs, root: str, splits=None) -> dict[str, list[RawExample]]:
    """VOC splits from ImageSets/Segmentation, plus `train_aug` when SBD (benchmark_RELEASE) is present:
    SBD train + SBD val + VOC train, minus VOC val, de-duplicated (the 10,582-image recipe)."""
    voc = _voc_dir(fs, root)
    sets = posixpath.join(voc, "ImageSets", "Segmentation")
    sbd = posixpath.join(root, "benchmark_RELEASE", "dataset")
    has_sbd = _is_dir(fs, sbd)
    available = sorted(posixpath.basename(i.path)[:-4] for i in fs.get_file_info(pafs.FileSelector(sets))
                       if i.path.endswith(".txt"))
    if has_sbd:
        available.append("train_aug")
    wanted = list(splits) if splits else [s for s in ("train", "val", "train_aug") if s in available]
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise LayoutError(f"{root}: split(s) {', '.join(unknown)} not found; available: {', '.join(available)}")

    def voc_example(image_id, split):
        return RawExample(image_id, split, posixpath.join(voc, "JPEGImages", f"{image_id}.jpg"),
                          posixpath.join(voc, "SegmentationClass", f"{image_id}.png"), "index_png")

    out = {}
    for split in wanted:
        if split != "train_aug":
            out[split] = [voc_example(i, split) for i in _read_lines(fs, posixpath.join(sets, f"{split}.txt"))]
            continue
        voc_train = _read_lines(fs, posixpath.join(sets, "train.txt"))
        voc_val = set(_read_lines(fs, posixpath.join(sets, "val.txt")))
        sbd_ids = _read_lines(fs, posixpath.join(sbd, "train.txt")) + _read_lines(fs, posixpath.join(sbd, "val.txt"))
        voc_labelled = set(voc_train)
        examples, seen = [], set()
        for image_id in voc_train + sbd_ids:
            if image_id in voc_val or image_id in seen:
                continue
            seen.add(image_id)
            if image_id in voc_labelled:  # VOC's own annotation (with its void band) wins over SBD's
                examples.append(voc_example(image_id, split))
            else:
                examples.append(RawExample(image_id, split, posixpath.join(sbd, "img", f"{image_id}.jpg"),
                                           posixpath.join(sbd, "cls", f"{image_id}.mat"), "sbd_mat"))
        out[split] = examples
    return out


def find_cityscapes(fs, root: str, splits=None) -> dict[str, list[RawExample]]:
    images_root = posixpath.join(root, "leftImg8bit")
    if not _is_dir(fs, images_root) or not _is_dir(fs, posixpath.join(root, "gtFine")):
        raise LayoutError(f"{root}: expected leftImg8bit/ and gtFine/ (the Cityscapes layout)")
    available = sorted(posixpath.basename(i.path) for i in fs.get_file_info(pafs.FileSelector(images_root))
                       if i.type == pafs.FileType.Directory)
    wanted = list(splits) if splits else [s for s in ("train", "val") if s in available]
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise LayoutError(f"{root}: split(s) {', '.join(unknown)} not found; available: {', '.join(available)}")
    suffix = "_leftImg8bit.png"
    out = {}
    for split in wanted:
        infos = fs.get_file_info(pafs.FileSelector(posixpath.join(images_root, split), recursive=True))
        examples = []
        for info in sorted((i for i in infos if i.path.endswith(suffix)), key=lambda i: i.path):
            city = posixpath.basename(posixpath.dirname(info.path))
            stem = posixpath.basename(info.path)[: -len(suffix)]
            label = posixpath.join(root, "gtFine", split, city, f"{stem}_gtFine_labelIds.png")
            examples.append(RawExample(stem, split, info.path, label, "cityscapes_ids"))
        out[split] = examples
    return out


def find_examples(fs, root: str, dataset: str, splits=None) -> dict[str, list[RawExample]]:
    if dataset not in DATASETS:
        raise LayoutError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    if not _is_dir(fs, root):
        raise LayoutError(f"{root}: no such directory")
    return (find_voc if dataset == "voc" else find_cityscapes)(fs, root, splits)


def _read(fs, path: str, what: str) -> bytes:
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise BadExample(f"{path}: missing {what} file") from None
    except OSError as e:
        if "not found" in str(e).lower() or "no such" in str(e).lower():
            raise BadExample(f"{path}: missing {what} file") from None
        raise


def load_label(fs, example: RawExample) -> np.ndarray:
    """Read the example's annotation as train ids (uint8, 255 = ignore)."""
    data = _read(fs, example.label, "label")
    try:
        if example.label_format == "sbd_mat":
            try:
                seg = loadmat(io.BytesIO(data))["GTcls"][0]["Segmentation"][0]
            except Exception as e:
                raise DecodeError(f"unreadable SBD .mat ({type(e).__name__}: {e})") from None
            return np.asarray(seg, dtype=np.uint8)
        im = open_image(data)
        if im.mode not in ("L", "P"):
            raise DecodeError(f"label must be a palette or grey PNG, got mode {im.mode}")
        label = np.asarray(im)
    except DecodeError as e:
        raise BadExample(f"{example.label}: {e}") from None
    if example.label_format == "cityscapes_ids":
        return cityscapes_to_train_ids(label)
    bad = np.setdiff1d(np.unique(label), np.r_[np.arange(VOC.num_classes), IGNORE_INDEX])
    if bad.size:
        raise BadExample(f"{example.label}: label values {bad.tolist()[:5]} are not VOC class ids")
    return label


def example_rows(fs, example: RawExample, aug_copies: int = 0, seed: int = 0,
                 scale_range=(0.5, 1.5)) -> list[dict]:
    """The Parquet rows of one example: the original, then `aug_copies` random-rescale + flip copies
    (train splits only), each reproducible from (seed, image id, copy index)."""
    data = _read(fs, example.image, "image")
    try:
        im = open_image(data)
    except DecodeError as e:
        raise BadExample(f"{example.image}: {e}") from None
    label = load_label(fs, example)
    if label.shape != (im.height, im.width):
        raise BadExample(f"{example.label}: label is {label.shape[1]}x{label.shape[0]}, "
                         f"image {example.image} is {im.width}x{im.height}")
    image = None
    if im.mode != "RGB":  # keep original bytes whenever they already decode to RGB
        image = np.asarray(im.convert("RGB"))
        data = encode_png(image)

    def row(image_bytes, label_arr, variant):
        return {"image_id": example.image_id, "split": example.split, "image": image_bytes,
                "label": encode_label(label_arr), "height": label_arr.shape[0], "width": label_arr.shape[1],
                "source": example.image, "variant": variant}

    rows = [row(data, label, "orig")]
    if aug_copies and example.split.startswith("train"):
        image = np.asarray(im.convert("RGB")) if image is None else image
        for k in range(aug_copies):
            rng = np.random.default_rng([seed, zlib.crc32(example.image_id.encode()), k])
            aug_image, aug_label, variant = random_scale_flip(rng, image, label, scale_range)
            rows.append(row(encode_png(aug_image), aug_label, variant))
    return rows


def shard_table(fs, examples, aug_copies: int = 0, seed: int = 0):
    """Convert a shard of examples: (pyarrow Table of the good rows or None, error records)."""
    import pyarrow as pa

    from .codec import SCHEMA

    rows, errors = [], []
    for example in examples:
        try:
            rows.extend(example_rows(fs, example, aug_copies, seed))
        except BadExample as e:
            errors.append({"image_id": example.image_id, "split": example.split, "source": example.image,
                           "reason": str(e)})
    if not rows:
        return None, errors
    # Column-wise: Table.from_pylist would import pandas (~0.3 s per worker) for nothing.
    return pa.table({name: [r[name] for r in rows] for name in SCHEMA.names}, schema=SCHEMA), errors
