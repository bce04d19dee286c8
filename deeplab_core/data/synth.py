"""Synthetic segmentation data written in the exact on-disk layouts of PASCAL VOC 2012 (+SBD)
and Cityscapes, so that every reader (ours and torchvision's) runs on it as on the real trees.

Scenes are learnable and boundary-sensitive: each class has its own shape, hue, aspect and stripe
texture; objects span ~5%..60% of the image side over a cluttered, smoothly varying background.
Everything is a pure function of the seed.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .codec import encode_jpeg, encode_png
from .labels import CITYSCAPES_LABELS, IGNORE_INDEX, VOC

SHAPES = ("ellipse", "rectangle", "triangle", "diamond", "ring", "cross")


@dataclass(frozen=True)
class Appearance:
    rgb: tuple[float, float, float]
    shape: str
    aspect: float
    period: float
    angle: float


def appearance(class_key: int) -> Appearance:
    """Class-dependent look: evenly spread saturated hues, one of six shapes, stripe texture."""
    hue = (class_key * 0.618034) % 1.0
    rgb = tuple(float(v) for v in _hsv_to_rgb(hue, 0.85, 0.9))
    return Appearance(rgb=rgb, shape=SHAPES[class_key % len(SHAPES)],
                      aspect=0.6 + 0.8 * ((class_key * 7) % 5) / 4,
                      period=4.0 + 3.0 * (class_key % 4), angle=np.pi * ((class_key * 37) % 180) / 180)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return 255 * np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """u, v in [-1, 1] over the object's box."""
    if shape == "ellipse":
        return u * u + v * v <= 1
    if shape == "rectangle":
        return (np.abs(u) <= 0.9) & (np.abs(v) <= 0.9)
    if shape == "triangle":
        return (v <= 1) & ((v + 1) / 2 >= np.abs(u))
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1) & (r2 >= 0.3)
    return ((np.abs(u) < 0.35) | (np.abs(v) < 0.35)) & (np.abs(u) <= 1) & (np.abs(v) <= 1)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Muted, smoothly varying colour field with grey clutter boxes (all labelled background)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    base = rng.uniform(70, 150, size=3)
    for c in range(3):
        field = np.zeros((h, w), np.float32)
        for _ in range(3):
            fy, fx = rng.uniform(0.3, 3.0, size=2) * 2 * np.pi / np.array([h, w])
            field += np.sin(fy * yy + fx * xx + rng.uniform(0, 2 * np.pi)).astype(np.float32)
        img[..., c] = base[c] + 12 * field
    for _ in range(int(rng.integers(8, 25))):
        bh, bw = (rng.uniform(0.02, 0.12, size=2) * (h, w)).astype(int) + 1
        y0, x0 = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
        img[y0:y0 + bh, x0:x0 + bw] = rng.uniform(60, 170) + rng.uniform(-15, 15, size=3)
    return img


def _paint_object(rng, img, label, instances, class_key, label_value, instance_value, side):
    h, w = label.shape
    look = appearance(class_key)
    oh = max(3, int(side * np.sqrt(look.aspect)))
    ow = max(3, int(side / np.sqrt(look.aspect)))
    oh, ow = min(oh, h), min(ow, w)
    y0, x0 = int(rng.integers(0, h - oh + 1)), int(rng.integers(0, w - ow + 1))
    v, u = np.mgrid[-1:1:oh * 1j, -1:1:ow * 1j]
    mask = _shape_mask(look.shape, u, v)
    yy, xx = np.mgrid[y0:y0 + oh, x0:x0 + ow]
    stripes = np.sin(2 * np.pi * (xx * np.cos(look.angle) + yy * np.sin(look.angle)) / look.period) > 0
    shade = rng.uniform(0.85, 1.1)
    colour = np.asarray(look.rgb) * shade * (0.7 + 0.3 * stripes[..., None])
    region = img[y0:y0 + oh, x0:x0 + ow]
    region[mask] = colour[mask]
    label[y0:y0 + oh, x0:x0 + ow][mask] = label_value
    instances[y0:y0 + oh, x0:x0 + ow][mask] = instance_value


def void_borders(label: np.ndarray, radius: int) -> np.ndarray:
    """Mark pixels within `radius` of a label change as 255, like the VOC annotation's void band."""
    h, w = label.shape
    padded = np.pad(label, radius, mode="edge")
    border = np.zeros_like(label, dtype=bool)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            border |= padded[dy:dy + h, dx:dx + w] != label
    out = label.copy()
    out[border] = IGNORE_INDEX
    return out


def render_scene(rng: np.random.Generator, height: int, width: int, object_classes, max_objects: int = 4,
                 bands=None, scale_range=(0.05, 0.6)):
    """Return (image uint8 H×W×3, class map uint8 H×W, instance map int32 H×W).

    `bands`: optional top-to-bottom (class key, fraction) background regions (street scenes);
    otherwise the background is class 0. Object sides are log-uniform in `scale_range` × the short side.
    """
    img = _background(rng, height, width)
    label = np.zeros((height, width), np.uint8)
    instances = np.zeros((height, width), np.int32)
    if bands:
        edge = 0
        for key, frac in bands:
            top = edge
            edge = min(height, top + int(round(frac * height * rng.uniform(0.85, 1.15))))
            if key == bands[-1][0]:
                edge = height
            look = appearance(key)
            img[top:edge] = 0.6 * img[top:edge] + 0.4 * np.asarray(look.rgb)
            label[top:edge] = key
            instances[top:edge] = key
    short = min(height, width)
    counts: dict[int, int] = {}
    for _ in range(int(rng.integers(1, max_objects + 1))):
        key = int(rng.choice(object_classes))
        side = short * float(np.exp(rng.uniform(*np.log(scale_range))))
        counts[key] = counts.get(key, 0) + 1
        _paint_object(rng, img, label, instances, key, key, key * 1000 + counts[key] - 1, side)
    img += rng.normal(0, 4, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), label, instances


def crf_scene(seed: int, num_classes: int, height: int, width: int, stride: int = 16,
              confidence: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A CRF input as a DCNN gives it: an image of four scenes (2×2) and its class probabilities,
    made as a network's are, from scores on a 1/`stride` grid (class areas plus noise), upsampled
    bilinearly, then a softmax of `confidence`× their log. Returns (image H×W×3 uint8, probabilities
    C×H×W float32, true labels H×W)."""
    rng = np.random.default_rng([seed, num_classes])
    tiles = [render_scene(rng, height // 2, width // 2, range(1, num_classes), max_objects=6,
                          scale_range=(0.15, 0.6))[:2] for _ in range(4)]
    image, label = (np.concatenate([np.concatenate([tiles[0][k], tiles[1][k]], 1),
                                    np.concatenate([tiles[2][k], tiles[3][k]], 1)], 0) for k in (0, 1))
    height, width = label.shape
    grid = (-(-height // stride), -(-width // stride))
    padded = np.zeros((num_classes, grid[0] * stride, grid[1] * stride), np.float32)
    padded[:, :height, :width] = np.eye(num_classes, dtype=np.float32)[label].transpose(2, 0, 1)
    area = padded.reshape(num_classes, grid[0], stride, grid[1], stride).mean((2, 4))
    scores = confidence * np.log(area + 0.5 * rng.random(area.shape, dtype=np.float32) + 0.05)
    logits = np.stack([np.asarray(Image.fromarray(c, mode="F").resize((width, height), Image.BILINEAR))
                       for c in scores.astype(np.float32)])
    probs = np.exp(logits - logits.max(0))
    return image, (probs / probs.sum(0)).astype(np.float32), label


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def voc_image_ids(n: int, offset: int = 0) -> list[str]:
    return [f"{2007 + (offset + i) % 6}_{offset + i:06d}" for i in range(n)]


def write_voc(root: str | os.PathLike, train: int, val: int, seed: int = 0, size=(500, 375),
              sbd: bool = False, sbd_extra: int | None = None, classes: int = 20,
              scale_range=(0.05, 0.6)) -> dict:
    """Write `root/VOCdevkit/VOC2012` (and `root/benchmark_RELEASE` when `sbd`).

    `classes`: how many of VOC's 20 object classes appear (1..classes), `scale_range`: object side
    relative to the image's short side; both set how hard the data is to learn.

    SBD overlaps VOC as the real one does: some SBD images are VOC val images (which the
    train_aug recipe must drop), some are VOC train images, and `sbd_extra` exist only in SBD.
    """
    from scipy.io import savemat  # here: the rest of this module runs where scipy is absent (bench/crf.py)

    if not 1 <= classes < VOC.num_classes:
        raise ValueError(f"classes must be 1..{VOC.num_classes - 1}, got {classes}")
    root = Path(root)
    voc = root / "VOCdevkit" / "VOC2012"
    width, height = size
    train_ids = voc_image_ids(train)
    val_ids = voc_image_ids(val, offset=train)
    extra_ids = voc_image_ids(sbd_extra if sbd_extra is not None else train, offset=train + val) if sbd else []
    labels = {}
    for idx, image_id in enumerate(train_ids + val_ids + extra_ids):
        rng = np.random.default_rng([seed, idx])
        img, label, _ = render_scene(rng, height, width, object_classes=range(1, classes + 1),
                                     scale_range=scale_range)
        labels[image_id] = label
        _write_bytes(voc / "JPEGImages" / f"{image_id}.jpg", encode_jpeg(img))
        if image_id not in extra_ids:
            _write_bytes(voc / "SegmentationClass" / f"{image_id}.png",
                         encode_png(void_borders(label, 2), VOC.flat_palette()))
        if sbd:
            _write_bytes(root / "benchmark_RELEASE" / "dataset" / "img" / f"{image_id}.jpg", encode_jpeg(img))
    sets = voc / "ImageSets" / "Segmentation"
    for name, ids in (("train", train_ids), ("val", val_ids), ("trainval", train_ids + val_ids)):
        _write_bytes(sets / f"{name}.txt", "".join(f"{i}\n" for i in ids).encode())
    layout = {"voc": str(voc), "train": train_ids, "val": val_ids}
    if sbd:
        n_extra = len(extra_ids)
        sbd_train = extra_ids[: (2 * n_extra) // 3] + val_ids[: len(val_ids) // 2] + train_ids[: len(train_ids) // 2]
        sbd_val = extra_ids[(2 * n_extra) // 3:] + train_ids[len(train_ids) // 2: len(train_ids) // 2 + 2]
        ds = root / "benchmark_RELEASE" / "dataset"
        for image_id in sbd_train + sbd_val:
            label = labels[image_id]  # SBD has no void band around objects
            buf = io.BytesIO()
            savemat(buf, {"GTcls": {"Segmentation": label,
                                    "CategoriesPresent": np.unique(label[label > 0]).astype(np.uint8)}})
            _write_bytes(ds / "cls" / f"{image_id}.mat", buf.getvalue())
        for name, ids in (("train", sbd_train), ("val", sbd_val)):
            _write_bytes(ds / f"{name}.txt", "".join(f"{i}\n" for i in ids).encode())
        layout.update(sbd_train=sbd_train, sbd_val=sbd_val)
    return layout


CITYSCAPES_CITIES = {"train": ("aachen", "bochum", "bremen"), "val": ("frankfurt", "lindau", "munster")}
# Street layout: sky, buildings, road top to bottom, and the car bonnet (ego vehicle, void) at the bottom.
_STREET_BANDS = ((23, 0.3), (11, 0.25), (7, 0.35), (1, 0.1))
_STREET_OBJECTS = (26, 24, 20, 17, 33, 8, 21, 4, 28)  # car, person, sign, pole, bicycle, sidewalk, vegetation, static, bus
_CS_COLORS = np.zeros((256, 3), np.uint8)
for _l in CITYSCAPES_LABELS:
    _CS_COLORS[_l.id] = _l.color


def write_cityscapes(root: str | os.PathLike, train: int, val: int, seed: int = 0, size=(2048, 1024)) -> dict:
    """Write `root/leftImg8bit/{split}/{city}/…_leftImg8bit.png` and the matching gtFine files."""
    root = Path(root)
    width, height = size
    out = {}
    idx = 0
    for split, n in (("train", train), ("val", val)):
        names = []
        cities = CITYSCAPES_CITIES[split]
        for i in range(n):
            city = cities[i % len(cities)]
            stem = f"{city}_{i:06d}_000019"
            rng = np.random.default_rng([seed, 10_000 + idx])
            idx += 1
            img, label_ids, instances = render_scene(rng, height, width, _STREET_OBJECTS, max_objects=6,
                                                     bands=_STREET_BANDS)
            has_inst = {l.id for l in CITYSCAPES_LABELS if l.has_instances}
            instance_ids = np.where(np.isin(label_ids, list(has_inst)), instances, label_ids).astype(np.uint16)
            _write_bytes(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", encode_png(img))
            gt = root / "gtFine" / split / city
            _write_bytes(gt / f"{stem}_gtFine_labelIds.png", encode_png(label_ids))
            _write_bytes(gt / f"{stem}_gtFine_color.png", encode_png(_CS_COLORS[label_ids]))
            _write_bytes(gt / f"{stem}_gtFine_instanceIds.png", encode_png(instance_ids))
            names.append(stem)
        out[split] = names
    return out


def _split_scenes(seed: int, train: int, val: int, size, classes, scale_range=(0.15, 0.6)):
    """(split, image id, image, class map) of deterministic scenes over `classes`."""
    width, height = size
    ids = {"train": voc_image_ids(train), "val": voc_image_ids(val, offset=train)}
    for split, split_ids in ids.items():
        for image_id in split_ids:
            rng = np.random.default_rng([seed, int(image_id.split("_")[1])])
            image, label, _ = render_scene(rng, height, width, object_classes=classes, scale_range=scale_range)
            yield split, image_id, image, label


def context_label_files(seed: int) -> tuple[str, str, dict[int, int]]:
    """A `labels.txt` of 459 names (the 59 kept ones among 400 others, in a seeded order), the
    `59_labels.txt` listing the kept ones in another order and with the release's other spellings,
    and the map train id -> label id that the two imply."""
    from .labels import CONTEXT_CLASSES

    kept = list(CONTEXT_CLASSES[1:])
    names = kept + [f"thing{k:03d}" for k in range(459 - len(kept))]
    order = np.random.default_rng([seed, 459]).permutation(len(names))
    labels = [names[i] for i in order]                      # label id k + 1 is labels[k]
    label_id = {name: k + 1 for k, name in enumerate(labels)}
    respelled = {v: k for k, v in {"diningtable": "table", "bedcloth": "bedclothes", "clothes": "cloth"}.items()}
    listed = sorted(kept, key=lambda n: -label_id[n])       # not the alphabetical order of CONTEXT_CLASSES
    labels_txt = "".join(f"{k + 1}: {name}\n" for k, name in enumerate(labels))
    kept_txt = "".join(f"{k + 1}: {respelled.get(name, name)}\n" for k, name in enumerate(listed))
    return labels_txt, kept_txt, {CONTEXT_CLASSES.index(n): label_id[n] for n in kept}


def write_pascal_context(root: str | os.PathLike, train: int, val: int, seed: int = 0, size=(500, 375),
                         layout: str = "original", classes: int = 6) -> dict:
    """PASCAL-Context beside a VOC2010 tree, in the original release's layout (`trainval/<id>.mat`
    holding `LabelMap` with labels.txt's 459 ids, `labels.txt`, `59_labels.txt`, splits in
    ImageSets/Main) or mmsegmentation's (`SegmentationClassContext/<id>.png` with the 60 train ids,
    splits in ImageSets/SegmentationContext), or both. Scenes hold `classes` of the 59 kept classes
    and objects of classes outside them (which must read as background)."""
    from scipy.io import savemat

    from .labels import PASCAL_CONTEXT

    if layout not in ("original", "mmseg", "both"):
        raise ValueError(f"layout must be original, mmseg or both, got {layout!r}")
    root = Path(root)
    voc = root / "VOCdevkit" / "VOC2010"
    labels_txt, kept_txt, label_id = context_label_files(seed)
    other = {100 + k: 400 + k for k in range(3)}           # scene class -> a label id outside the 59
    to_label_id = np.zeros(256, np.uint16)
    to_train_id = np.zeros(256, np.uint8)
    for train_id in range(1, classes + 1):
        to_label_id[train_id], to_train_id[train_id] = label_id[train_id], train_id
    for key, lid in other.items():
        to_label_id[key] = lid                              # train id stays 0: background
    ids = {"train": [], "val": []}
    for split, image_id, image, label in _split_scenes(seed, train, val, size, list(range(1, classes + 1)) + list(other)):
        ids[split].append(image_id)
        _write_bytes(voc / "JPEGImages" / f"{image_id}.jpg", encode_jpeg(image))
        if layout in ("original", "both"):
            buf = io.BytesIO()
            savemat(buf, {"LabelMap": to_label_id[label]}, do_compression=True)
            _write_bytes(root / "trainval" / f"{image_id}.mat", buf.getvalue())
        if layout in ("mmseg", "both"):
            _write_bytes(voc / "SegmentationClassContext" / f"{image_id}.png",
                         encode_png(to_train_id[label], PASCAL_CONTEXT.flat_palette()))
    for split, split_ids in ids.items():
        text = "".join(f"{i}\n" for i in split_ids).encode()
        if layout in ("original", "both"):
            _write_bytes(voc / "ImageSets" / "Main" / f"{split}.txt", text)
        if layout in ("mmseg", "both"):
            _write_bytes(voc / "ImageSets" / "SegmentationContext" / f"{split}.txt", text)
    if layout in ("original", "both"):
        _write_bytes(root / "labels.txt", labels_txt.encode())
        _write_bytes(root / "59_labels.txt", kept_txt.encode())
    return ids


def write_pascal_person_part(root: str | os.PathLike, train: int, val: int, seed: int = 0, size=(500, 375),
                             lists: str = "ids") -> dict:
    """PASCAL-Person-Part beside a VOC2010 tree: part labels as palette PNGs (indices 0..6) in
    `pascal_person_part/pascal_person_part_gt`, splits as bare ids (`{train,val}_id.txt`) or, with
    `lists="paths"`, as the release's `{train,val}.txt` lines of image and label paths."""
    from .labels import PASCAL_PERSON_PART

    if lists not in ("ids", "paths"):
        raise ValueError(f"lists must be ids or paths, got {lists!r}")
    root = Path(root)
    parts = root / "pascal_person_part"
    ids = {"train": [], "val": []}
    for split, image_id, image, label in _split_scenes(seed, train, val, size, range(1, PASCAL_PERSON_PART.num_classes)):
        ids[split].append(image_id)
        _write_bytes(root / "VOCdevkit" / "VOC2010" / "JPEGImages" / f"{image_id}.jpg", encode_jpeg(image))
        _write_bytes(parts / "pascal_person_part_gt" / f"{image_id}.png", encode_png(label, PASCAL_PERSON_PART.flat_palette()))
    for split, split_ids in ids.items():
        if lists == "ids":
            text = "".join(f"{i}\n" for i in split_ids)
            name = f"{split}_id.txt"
        else:
            text = "".join(f"/JPEGImages/{i}.jpg /SegmentationPart/{i}.png\n" for i in split_ids)
            name = f"{split}.txt"
        _write_bytes(parts / "pascal_person_part_trainval_list" / name, text.encode())
    return ids


# Categories in the synthetic COCO scenes: VOC ones and, to be read as background in `voc` mode, others.
COCO_SCENE_CATEGORIES = (1, 3, 18, 62, 25, 28)  # person, car, dog, chair | giraffe, umbrella


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's crowd encoding: run lengths over the column-major pixels, starting with zeros."""
    flat = mask.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(np.r_[0, flat, 1 - flat[-1]])) if flat.size else np.array([0])
    counts = np.diff(np.r_[0, edges]).tolist()
    return {"counts": counts, "size": list(mask.shape)}


def write_coco(root: str | os.PathLike, train: int, val: int, seed: int = 0, size=(320, 240), year: int = 2017,
               crowd_every: int = 3) -> dict:
    """MS-COCO instances in the release layout: `annotations/instances_{train,val}<year>.json` (all 80
    categories listed) and `{train,val}<year>/<file name>` (2014 names carry the COCO_<split>_ prefix).
    Each image holds 1-3 polygon objects of `COCO_SCENE_CATEGORIES` (colour by category, so it can
    be learnt), larger ones first; every `crowd_every`-th image also a person crowd as uncompressed RLE."""
    from PIL import ImageDraw

    from .labels import COCO_CATEGORIES

    root = Path(root)
    width, height = size
    categories = [{"id": i, "name": n, "supercategory": "thing"} for i, n in COCO_CATEGORIES]
    layout, next_ann = {}, 1
    for split, count, offset in (("train", train, 0), ("val", val, train)):
        name = f"{split}{year}"
        images, annotations = [], []
        for k in range(count):
            image_id = 1000 + offset + k
            file_name = f"COCO_{name}_{image_id:012d}.jpg" if year == 2014 else f"{image_id:012d}.jpg"
            rng = np.random.default_rng([seed, image_id])
            canvas = Image.fromarray(np.clip(_background(rng, height, width), 0, 255).astype(np.uint8))
            draw = ImageDraw.Draw(canvas)
            objects = []
            for _ in range(int(rng.integers(1, 4))):
                category = int(rng.choice(COCO_SCENE_CATEGORIES))
                radius = min(width, height) * rng.uniform(0.15, 0.4)
                cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
                angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 9))))
                xy = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1).round(2)
                area = 0.5 * abs(np.dot(xy[:, 0], np.roll(xy[:, 1], 1)) - np.dot(xy[:, 1], np.roll(xy[:, 0], 1)))
                objects.append((area, category, xy))
            for area, category, xy in sorted(objects, key=lambda o: -o[0]):
                draw.polygon([tuple(p) for p in xy], fill=tuple(int(v) for v in appearance(category).rgb))
                x0, y0 = xy.min(0)
                annotations.append({"id": next_ann, "image_id": image_id, "category_id": category, "iscrowd": 0,
                                    "segmentation": [xy.ravel().tolist()], "area": float(area),
                                    "bbox": [float(x0), float(y0), *map(float, xy.max(0) - xy.min(0))]})
                next_ann += 1
            if crowd_every and k % crowd_every == crowd_every - 1:
                crowd = np.zeros((height, width), np.uint8)
                crowd[: height // 5, : width // 3] = 1
                annotations.append({"id": next_ann, "image_id": image_id, "category_id": 1, "iscrowd": 1,
                                    "segmentation": _uncompressed_rle(crowd), "area": float(crowd.sum()),
                                    "bbox": [0.0, 0.0, float(width // 3), float(height // 5)]})
                next_ann += 1
            _write_bytes(root / name / file_name, encode_jpeg(np.asarray(canvas)))
            images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        data = {"info": {"description": "synthetic COCO"}, "images": images, "annotations": annotations,
                "categories": categories}
        _write_bytes(root / "annotations" / f"instances_{name}.json", json.dumps(data).encode())
        layout[name] = [im["file_name"] for im in images]
    return layout
