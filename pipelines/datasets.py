"""Reading a preprocessed dataset (manifest.json + Parquet shards): plain rows for validation and
a Ray Data pipeline for training."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq

from deeplab_core.data.codec import decode_image, decode_label
from deeplab_core.data.transforms import train_sample
from pipelines import storage

MANIFEST = "manifest.json"


def read_manifest(uri: str) -> dict | None:
    path = storage.join(uri, MANIFEST)
    return json.loads(storage.read_bytes(path)) if storage.exists(path) else None


def load_manifest(uri: str) -> dict:
    manifest = read_manifest(uri)
    if manifest is None:
        raise FileNotFoundError(f"{uri}: no {MANIFEST} (not a preprocessed dataset, or preprocess did not finish)")
    return manifest


def split_files(uri: str, manifest: dict, split: str) -> list[str]:
    splits = manifest.get("splits", {})
    if split not in splits:
        raise ValueError(f"{uri}: no split {split!r}; available: {', '.join(splits) or 'none'}")
    if not splits[split]["rows"]:
        raise ValueError(f"{uri}: split {split!r} is empty (0 rows)")
    return [storage.join(uri, f) for f in splits[split]["files"]]


def read_rows(files: list[str], columns=("image_id", "image", "label"), limit: int | None = None) -> list[dict]:
    rows: list[dict] = []
    for uri in files:
        fs, path = storage.resolve(uri)
        rows.extend(pq.read_table(path, filesystem=fs, columns=list(columns)).to_pylist())
        if limit is not None and len(rows) >= limit:
            return rows[:limit]
    return rows


def augment_batch(batch: dict, crop: int, scale_range, flip: bool) -> dict:
    """Ray Data `map_batches` function: decode, random rescale, flip, pad with 255, random crop.
    Returns uint8 crops (4× less object-store traffic than float); workers normalise on device.
    A fresh OS-seeded generator per batch: every epoch sees new augmentations."""
    rng = np.random.default_rng()
    images, labels = [], []
    for image_bytes, label_bytes in zip(batch["image"], batch["label"]):
        image, label = train_sample(rng, decode_image(image_bytes), decode_label(label_bytes), crop,
                                    tuple(scale_range), flip)
        images.append(image)
        labels.append(label)
    return {"image": np.stack(images), "label": np.stack(labels)}


def train_dataset(files: list[str], crop: int, scale_range, flip: bool, data_cpus_per_task: float = 1.0):
    """The streaming training input: Parquet shards -> decoded, augmented uint8 crops."""
    import ray.data

    fs, _ = storage.resolve(files[0])
    paths = [storage.resolve(f)[1] for f in files]
    ds = ray.data.read_parquet(paths, filesystem=fs, columns=["image", "label"], shuffle="files")
    return ds.map_batches(augment_batch, fn_kwargs={"crop": crop, "scale_range": tuple(scale_range), "flip": flip},
                          batch_size=8, batch_format="numpy", num_cpus=data_cpus_per_task)
