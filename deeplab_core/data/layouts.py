"""Readers of the raw PASCAL VOC 2012 (+SBD), Cityscapes, PASCAL-Context and PASCAL-Person-Part
trees, on any pyarrow filesystem.

`find_examples` lists what a tree holds per split; `example_rows` turns one example into Parquet
rows (train ids, the original image bytes, optional augmented copies) or raises `BadExample`.
"""
from __future__ import annotations

import io
import json
import posixpath
import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs
from scipy.io import loadmat

from .codec import DecodeError, encode_label, encode_png, open_image
from .labels import (COCO_CLASSES, COCO_TO_VOC, CONTEXT_CLASSES, IGNORE_INDEX, PASCAL_PERSON_PART, VOC,
                     VOC_CLASSES, cityscapes_to_train_ids)
from .transforms import random_scale_flip

DATASETS = ("voc", "cityscapes", "pascal_context", "pascal_person_part", "coco")
COCO_LABELS = ("voc", "all")  # the 20 VOC categories (the DeepLab recipe), or all 80
# How 59_labels.txt spells some PASCAL-Context classes -> how labels.txt (and CONTEXT_CLASSES) spell them.
CONTEXT_SPELLINGS = {"diningtable": "table", "bedcloth": "bedclothes", "clothes": "cloth"}


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
    label_format: str  # "index_png" (VOC), "sbd_mat", "cityscapes_ids", "context_mat", "context_png", "part_png"
    class_map: tuple[int, ...] | None = None  # context_mat: train id of each of the 459 labels (one shared tuple)
    coco: str | None = None  # coco: JSON of the image's size, its annotations and {category id: train id}


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


def _split_lists(fs, root: str, directory: str, names: dict[str, str], splits, parse=lambda line: line):
    """{split: ids} from `directory/<file>` for the wanted splits; `names` maps split -> file name."""
    available = [s for s, f in names.items() if fs.get_file_info(posixpath.join(directory, f)).is_file]
    wanted = list(splits) if splits else [s for s in ("train", "val") if s in available]
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise LayoutError(f"{root}: split(s) {', '.join(unknown)} not found in {directory}; "
                          f"available: {', '.join(available) or 'none'}")
    return {s: [parse(line) for line in _read_lines(fs, posixpath.join(directory, names[s]))] for s in wanted}


def context_class_map(fs, root: str) -> tuple[int, ...]:
    """PASCAL-Context's 459 label ids -> the project's 60 train ids, by name: `labels.txt` names
    each id, `59_labels.txt` the kept classes (in another order, some spelled otherwise); every other
    id, and 0 (unlabeled), is background."""
    def entries(name):
        out = []
        for line in _read_lines(fs, posixpath.join(root, name)):
            number, _, label = line.partition(":")
            if not number.strip().isdigit() or not label.strip():
                raise LayoutError(f"{posixpath.join(root, name)}: expected lines '<id>: <name>', got {line!r}")
            out.append((int(number), label.strip()))
        return out

    ids = {label: number for number, label in entries("labels.txt")}
    class_map = [0] * (max(ids.values(), default=0) + 1)
    for _, label in entries("59_labels.txt"):
        name = CONTEXT_SPELLINGS.get(label, label)
        if name not in CONTEXT_CLASSES:
            raise LayoutError(f"{root}/59_labels.txt: {label!r} is not a PASCAL-Context class of the paper")
        number = ids.get(name, ids.get(label))
        if number is None:
            raise LayoutError(f"{root}/labels.txt: no class named {name!r} (59_labels.txt lists it)")
        class_map[number] = CONTEXT_CLASSES.index(name)
    return tuple(class_map)


def find_pascal_context(fs, root: str, splits=None, log=None) -> dict[str, list[RawExample]]:
    """The original release (`trainval/<id>.mat`, `labels.txt`, `59_labels.txt`, splits of
    VOC2010/ImageSets/Main) or mmsegmentation's conversion (`VOC2010/SegmentationClassContext`,
    `ImageSets/SegmentationContext`); the original when both are there."""
    voc = posixpath.join(root, "VOCdevkit", "VOC2010")
    original = _is_dir(fs, posixpath.join(root, "trainval")) and fs.get_file_info(
        posixpath.join(root, "labels.txt")).is_file
    converted = _is_dir(fs, posixpath.join(voc, "SegmentationClassContext"))
    if not original and not converted:
        raise LayoutError(f"{root}: expected the PASCAL-Context release (trainval/, labels.txt, 59_labels.txt "
                          "beside VOCdevkit/VOC2010) or mmsegmentation's VOC2010/SegmentationClassContext")
    if original and converted and log:
        log(f"preprocess: {root} holds both PASCAL-Context layouts; reading the original release (trainval/*.mat)")
    image = lambda i: posixpath.join(voc, "JPEGImages", f"{i}.jpg")  # noqa: E731
    if original:
        class_map = context_class_map(fs, root)
        lists = _split_lists(fs, root, posixpath.join(voc, "ImageSets", "Main"),
                             {"train": "train.txt", "val": "val.txt"}, splits, lambda line: line.split()[0])
        return {s: [RawExample(i, s, image(i), posixpath.join(root, "trainval", f"{i}.mat"), "context_mat", class_map)
                    for i in ids] for s, ids in lists.items()}
    lists = _split_lists(fs, root, posixpath.join(voc, "ImageSets", "SegmentationContext"),
                         {"train": "train.txt", "val": "val.txt"}, splits)
    return {s: [RawExample(i, s, image(i), posixpath.join(voc, "SegmentationClassContext", f"{i}.png"), "context_png")
                for i in ids] for s, ids in lists.items()}


def find_pascal_person_part(fs, root: str, splits=None) -> dict[str, list[RawExample]]:
    """VOC2010 images, part labels in `pascal_person_part/pascal_person_part_gt/<id>.png`; splits
    from `pascal_person_part_trainval_list/{train,val}_id.txt`, else `{train,val}.txt` (image and
    label paths per line: the image's basename is the id)."""
    parts = posixpath.join(root, "pascal_person_part")
    lists_dir = posixpath.join(parts, "pascal_person_part_trainval_list")
    if not _is_dir(fs, posixpath.join(parts, "pascal_person_part_gt")) or not _is_dir(fs, lists_dir):
        raise LayoutError(f"{root}: expected pascal_person_part/pascal_person_part_gt and "
                          "pascal_person_part/pascal_person_part_trainval_list (the PASCAL-Person-Part layout)")
    if fs.get_file_info(posixpath.join(lists_dir, "train_id.txt")).is_file:
        lists = _split_lists(fs, root, lists_dir, {"train": "train_id.txt", "val": "val_id.txt"}, splits)
    else:
        lists = _split_lists(fs, root, lists_dir, {"train": "train.txt", "val": "val.txt"}, splits,
                             lambda line: posixpath.splitext(posixpath.basename(line.split()[0]))[0])
    voc = posixpath.join(root, "VOCdevkit", "VOC2010")
    return {s: [RawExample(i, s, posixpath.join(voc, "JPEGImages", f"{i}.jpg"),
                           posixpath.join(parts, "pascal_person_part_gt", f"{i}.png"), "part_png") for i in ids]
            for s, ids in lists.items()}


def coco_classes(categories: list[dict], labels: str) -> dict[int, int]:
    """COCO category id -> train id, by name: the 20 VOC classes (`voc`, others left out: they
    read as background) or all 80 in COCO's order (`all`)."""
    out = {}
    for category in categories:
        name = category["name"]
        if labels == "voc":
            if name in COCO_TO_VOC:
                out[category["id"]] = VOC_CLASSES.index(COCO_TO_VOC[name])
        elif name in COCO_CLASSES:
            out[category["id"]] = COCO_CLASSES.index(name)
        else:
            raise LayoutError(f"COCO category {name!r} (id {category['id']}) is not one of the 80")
    return out


def find_coco(fs, root: str, splits=None, labels: str = "voc") -> dict[str, list[RawExample]]:
    """MS-COCO 2014/2017 instances: `annotations/instances_<split>.json` (split = train2017, val2014,
    ...) and the images in `<root>/<split>/`. Each example carries its own annotations."""
    if labels not in COCO_LABELS:
        raise LayoutError(f"unknown COCO label mode {labels!r}; valid: {', '.join(COCO_LABELS)}")
    annotations = posixpath.join(root, "annotations")
    files = {posixpath.basename(i.path)[len("instances_"):-len(".json")]: i.path
             for i in (fs.get_file_info(pafs.FileSelector(annotations)) if _is_dir(fs, annotations) else [])
             if posixpath.basename(i.path).startswith("instances_") and i.path.endswith(".json")}
    if not files:
        raise LayoutError(f"{root}: no annotations/instances_<split>.json (expected the MS-COCO layout)")
    wanted = list(splits) if splits else sorted(files)
    unknown = [s for s in wanted if s not in files]
    if unknown:
        raise LayoutError(f"{root}: split(s) {', '.join(unknown)} not found; available: {', '.join(sorted(files))}")
    out = {}
    for split in wanted:
        try:
            data = json.loads(_read(fs, files[split], "annotation"))
        except ValueError as e:
            raise LayoutError(f"{files[split]}: not COCO instances JSON ({e})") from None
        classes = {str(k): v for k, v in coco_classes(data.get("categories", []), labels).items()}
        by_image: dict[int, list] = {}
        for ann in data.get("annotations", []):
            by_image.setdefault(ann["image_id"], []).append(ann)
        out[split] = [RawExample(
            posixpath.splitext(image["file_name"])[0], split, posixpath.join(root, split, image["file_name"]),
            files[split], f"coco_{labels}", coco=json.dumps({
                "height": image["height"], "width": image["width"], "classes": classes,
                "anns": [{k: a[k] for k in ("id", "category_id", "segmentation", "iscrowd", "area") if k in a}
                         for a in by_image.get(image["id"], [])]}))
            for image in sorted(data.get("images", []), key=lambda im: im["id"])]
    return out


def coco_label(example: RawExample) -> np.ndarray:
    """Paint an image's instances: largest first, so smaller objects stay on top (ties by annotation
    id: deterministic); categories without a train id stay background; crowd regions are 255 where
    no object is. Masks come from pycocotools (polygons, RLE, uncompressed RLE)."""
    from pycocotools import mask as mask_api

    record = json.loads(example.coco)
    h, w = record["height"], record["width"]
    label = np.zeros((h, w), np.uint8)
    crowd = np.zeros((h, w), bool)
    for ann in sorted(record["anns"], key=lambda a: (-a.get("area", 0), a["id"])):
        segmentation = ann["segmentation"]
        if isinstance(segmentation, list):
            for polygon in segmentation:
                xs, ys = np.asarray(polygon[0::2]), np.asarray(polygon[1::2])
                if len(polygon) < 6 or len(polygon) % 2 or xs.min() < -1 or ys.min() < -1 or \
                        xs.max() > w + 1 or ys.max() > h + 1:
                    raise BadExample(f"{example.image}: annotation {ann['id']}: polygon outside the {w}x{h} image "
                                     "or malformed")
            rle = mask_api.merge(mask_api.frPyObjects(segmentation, h, w))
        elif not isinstance(segmentation, dict):
            raise BadExample(f"{example.image}: annotation {ann['id']}: segmentation is neither polygons nor RLE")
        elif isinstance(segmentation.get("counts"), list):
            rle = mask_api.frPyObjects(segmentation, h, w)
        else:
            rle = segmentation
        try:
            mask = mask_api.decode(rle).astype(bool)
        except Exception as e:  # pycocotools' own error for a damaged RLE
            raise BadExample(f"{example.image}: annotation {ann['id']}: unreadable mask ({type(e).__name__}: {e})") from None
        if mask.shape != (h, w):
            raise BadExample(f"{example.image}: annotation {ann['id']}: mask of {mask.shape[1]}x{mask.shape[0]}, "
                             f"image is {w}x{h}")
        if ann.get("iscrowd"):
            crowd |= mask
        elif str(ann["category_id"]) in record["classes"]:
            label[mask] = record["classes"][str(ann["category_id"])]
    label[crowd & (label == 0)] = IGNORE_INDEX
    return label


def find_examples(fs, root: str, dataset: str, splits=None, log=None, coco_labels: str = "voc"
                  ) -> dict[str, list[RawExample]]:
    if dataset not in DATASETS:
        raise LayoutError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    if not _is_dir(fs, root):
        raise LayoutError(f"{root}: no such directory")
    if dataset == "pascal_context":
        return find_pascal_context(fs, root, splits, log)
    if dataset == "coco":
        return find_coco(fs, root, splits, coco_labels)
    return {"voc": find_voc, "cityscapes": find_cityscapes,
            "pascal_person_part": find_pascal_person_part}[dataset](fs, root, splits)


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
    if example.coco is not None:
        return coco_label(example)
    data = _read(fs, example.label, "label")
    try:
        if example.label_format == "sbd_mat":
            return np.asarray(_mat_variable(data, "SBD", lambda m: m["GTcls"][0]["Segmentation"][0]), dtype=np.uint8)
        if example.label_format == "context_mat":
            label_map = np.asarray(_mat_variable(data, "PASCAL-Context", lambda m: m["LabelMap"]))
            class_map = np.asarray(example.class_map, dtype=np.uint8)
            if label_map.ndim != 2 or label_map.size and label_map.max() >= len(class_map):
                raise DecodeError(f"LabelMap values up to {label_map.max()} outside labels.txt's 0..{len(class_map) - 1}")
            return class_map[label_map]
        im = open_image(data)
        if im.mode not in ("L", "P"):  # palette indices are the classes: never converted to colours
            raise DecodeError(f"label must be a palette or grey PNG, got mode {im.mode}")
        label = np.asarray(im)
    except DecodeError as e:
        raise BadExample(f"{example.label}: {e}") from None
    if example.label_format == "cityscapes_ids":
        return cityscapes_to_train_ids(label)
    classes, what = {"part_png": (PASCAL_PERSON_PART.num_classes, "PASCAL-Person-Part"),
                     "context_png": (len(CONTEXT_CLASSES), "PASCAL-Context")}.get(
        example.label_format, (VOC.num_classes, "VOC"))
    bad = np.setdiff1d(np.unique(label), np.r_[np.arange(classes), IGNORE_INDEX])
    if bad.size:
        raise BadExample(f"{example.label}: label values {bad.tolist()[:5]} are not {what} class ids")
    return label


def _mat_variable(data: bytes, what: str, pick):
    try:
        return pick(loadmat(io.BytesIO(data)))
    except Exception as e:
        raise DecodeError(f"unreadable {what} .mat ({type(e).__name__}: {e})") from None


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
