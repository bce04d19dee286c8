"""The I/O stages of batch segmentation: Ray Data tasks that read and decode the inputs and write
the outputs, and the output's record of processed inputs (`_manifest/`, `summary/`).

Nothing here imports torch: the CPU task workers that run these (several per node, each a new
process) start in a fraction of the time and memory of the model's (`pipelines.segmentation`).
"""
from __future__ import annotations

import io
import json
import posixpath
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deeplab_core.data.codec import DecodeError, encode_jpeg, encode_png
from deeplab_core.data.labels import cityscapes_to_label_ids, label_set_of
from deeplab_core.data.photos import decode_photo
from deeplab_core.monitoring import image_confidence
from pipelines import storage

MANIFEST_DIR = "_manifest"
SUMMARY_DIR = "summary"
EMPTY_IMAGE = np.zeros((0, 0, 3), np.uint8)
EMPTY_MASK = np.zeros((0, 0), np.uint8)


# The store did not answer for this row: not a verdict on the image. The driver stops the run at the
# first such row and never commits it, so the rerun does the image. (A status, not an exception:
# Ray Data does not carry a task's exception type back to the driver.)
UNAVAILABLE = "unavailable"


def mask_path(relative: str) -> str:
    """masks/<relative path without its extension>.png"""
    return posixpath.join("masks", posixpath.splitext(relative)[0] + ".png")


def confidence_path(relative: str) -> str:
    """confidence/<relative path without its extension>.png: 8-bit, 255 × each pixel's top probability."""
    return posixpath.join("confidence", posixpath.splitext(relative)[0] + ".png")


def elapsed_ms(start: float) -> float:
    return 1000.0 * (time.perf_counter() - start)


def read_and_decode(batch: dict, max_pixels: int, orient: bool = True) -> dict:
    """Ray Data task: read each source's bytes and decode them to H×W×3 uint8 as a viewer shows them
    (`deeplab_core.data.photos`; `orient=False`: in sensor order). Records the EXIF orientation found
    (0: not decoded) and the frame count."""
    n = len(batch["source"])
    images, status, errors, decode_ms = [EMPTY_IMAGE] * n, ["ok"] * n, [""] * n, [0.0] * n
    orientation, frames = [0] * n, [0] * n
    for i, source in enumerate(batch["source"]):
        start = time.perf_counter()
        try:
            photo = decode_photo(storage.read_bytes(source), max_pixels, orient)
            images[i], orientation[i], frames[i] = photo.pixels, photo.orientation, photo.frames
        except storage.StorageUnavailable as e:
            status[i], errors[i] = UNAVAILABLE, str(e)
        except (DecodeError, storage.StorageError) as e:
            status[i], errors[i] = "error", str(e)
        decode_ms[i] = elapsed_ms(start)
    return {**batch, "image": images, "status": status, "error": errors, "decode_ms": decode_ms,
            "orientation": orientation, "frames": frames}


def write_outputs(batch: dict, output: str, spec: dict, label_ids: bool, overlays: bool,
                  model_uri: str, crf: dict | None, crf_backend: str = "", confidence_maps: bool = False,
                  low_confidence: float = 0.5) -> dict:
    """Ray Data task: write each mask (and overlay, and confidence map) atomically; return the summary
    rows, with each image's confidence statistics (`deeplab_core.monitoring.image_confidence`) and the
    scale the stage that made the mask ran the CRF at (`crf_scale`)."""
    labels = label_set_of(spec)
    palette = labels.flat_palette()
    n = len(batch["source"])
    status, errors = list(batch["status"]), list(batch["error"])
    rows = {k: [] for k in ("mask_uri", "height", "width", "crf_scale", "class_pixels", "mean_confidence",
                            "low_confidence_fraction", "mean_entropy", "confidence_histogram", "write_ms")}
    for i in range(n):
        start = time.perf_counter()
        mask, uri = batch["mask"][i], ""
        if status[i] == "ok":
            uri = storage.join(output, mask_path(batch["relative"][i]))
            try:
                png = (encode_png(cityscapes_to_label_ids(mask)) if label_ids else encode_png(mask, palette))
                storage.write_bytes(uri, png)
                if overlays:
                    blended = labels.blend(batch["image"][i], mask)
                    relative = posixpath.splitext(batch["relative"][i])[0] + ".jpg"
                    storage.write_bytes(storage.join(output, "overlays", relative), encode_jpeg(blended))
                if confidence_maps:
                    storage.write_bytes(storage.join(output, confidence_path(batch["relative"][i])),
                                        encode_png(batch["confidence"][i]))
            except storage.StorageUnavailable as e:
                status[i], errors[i], uri = UNAVAILABLE, str(e), ""
        rows["mask_uri"].append(uri)
        rows["height"].append(int(mask.shape[0]) if mask.ndim == 2 else 0)
        rows["width"].append(int(mask.shape[1]) if mask.ndim == 2 else 0)
        rows["crf_scale"].append(float(batch["crf_scale"][i]) if mask.ndim == 2 and mask.size else 0.0)
        rows["class_pixels"].append(np.bincount(mask.ravel(), minlength=labels.num_classes).astype(np.int64)
                                    if uri else np.zeros(labels.num_classes, np.int64))
        stats = image_confidence(batch["confidence"][i] if uri else EMPTY_MASK, batch["entropy"][i], low_confidence)
        for key, value in stats.items():
            rows[key].append(value)
        rows["write_ms"].append(elapsed_ms(start))
    keep = ("source", "relative", "version", "orientation", "frames", "scale", "tile", "decode_ms", "model_ms",
            "crf_ms")
    return {**{k: batch[k] for k in keep}, **rows, "status": status, "error": errors,
            "model_uri": [model_uri] * n, "crf_params": [json.dumps(crf, sort_keys=True) if crf else ""] * n,
            "crf_backend": [crf_backend if crf else ""] * n}


# --- the output's record of processed inputs --------------------------------------------------------

def _read_parts(uri: str) -> list[tuple[str, pa.Table]]:
    parts = []
    for path in storage.list_files(uri, (".parquet",)):
        fs, p = storage.resolve(path)
        parts.append((posixpath.basename(p), pq.read_table(p, filesystem=fs)))
    return parts


def processed_versions(output: str) -> dict[str, str]:
    """source -> the version (size:mtime) a committed run processed, from `_manifest/`. First removes
    summary parts whose manifest part was never written (a run that died between the two writes),
    so a rerun never duplicates summary rows."""
    manifest = _read_parts(storage.join(output, MANIFEST_DIR))
    committed = {name for name, _ in manifest}
    for path in storage.list_files(storage.join(output, SUMMARY_DIR), (".parquet",)):
        if posixpath.basename(path) not in committed:
            storage.delete(path)
    done: dict[str, str] = {}
    for _, table in sorted(manifest, key=lambda p: p[0]):  # part names sort by time: newest wins
        done.update(zip(table.column("source").to_pylist(), table.column("version").to_pylist()))
    return done


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def commit(output: str, rows: list[dict]) -> None:
    """Append one part to `summary/`, then the same inputs to `_manifest/` (the commit point)."""
    name = f"part-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
    summary = pa.Table.from_pylist(rows)
    storage.write_bytes(storage.join(output, SUMMARY_DIR, name), _parquet_bytes(summary))
    storage.write_bytes(storage.join(output, MANIFEST_DIR, name),
                        _parquet_bytes(summary.select(["source", "version", "status", "mask_uri"])))
