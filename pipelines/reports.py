"""Pictures for MLflow artifacts: confusion matrices, colourised prediction overlays, curves."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from deeplab_core.data.codec import decode_image, encode_png  # noqa: E402
from deeplab_core.data.labels import label_set_of  # noqa: E402
from deeplab_core.inference import predict_probabilities  # noqa: E402


def confusion_plot(matrix: np.ndarray, classes: list[str], path: str) -> str:
    """Row-normalised confusion matrix (rows: ground truth; the last column: predictions outside the
    classes)."""
    rows = matrix.sum(1, keepdims=True)
    norm = np.divide(matrix, rows, out=np.zeros(matrix.shape, float), where=rows > 0)
    size = max(4, 0.35 * len(classes))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(matrix.shape[1]), [*classes, "(none)"][:matrix.shape[1]], rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    fig.colorbar(im)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def trimap_plot(curves: dict[str, dict[int, float | None]], path: str) -> str:
    """mIoU within bands around object boundaries against the band width (DeepLab Fig. 10)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, curve in curves.items():
        widths = [int(w) for w, v in curve.items() if v is not None]
        ax.plot(widths, [100 * curve[w] for w in curve if curve[w] is not None], marker=".", label=name)
    ax.set_xlabel("trimap band width (pixels)")
    ax.set_ylabel("mean IoU (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def overlay_images(model, rows: list[dict], spec: dict, directory: str) -> list[str]:
    """Image | prediction blended over it, side by side, for a few val rows."""
    labels = label_set_of(spec)
    paths = []
    for row in rows:
        image = decode_image(row["image"])
        prediction = predict_probabilities(model, image).argmax(0).astype(np.uint8)
        blended = labels.blend(image, prediction)
        path = os.path.join(directory, f"{row['image_id']}.png")
        with open(path, "wb") as f:
            f.write(encode_png(np.concatenate([image, blended], axis=1)))
        paths.append(path)
    return paths


def distribution_plot(current, path: str, reference=None) -> str:
    """A batch run's class pixel shares and confidence histogram (`deeplab_core.monitoring.Distributions`),
    beside a reference's when given."""
    names = list(current.class_share)
    fig, (classes, confidence) = plt.subplots(1, 2, figsize=(max(8, 0.35 * len(names) + 5), 3.8))
    x = np.arange(len(names))
    sides = [("this run", current)] + ([("reference", reference)] if reference is not None else [])
    width = 0.8 / len(sides)
    for k, (label, d) in enumerate(sides):
        classes.bar(x + (k - (len(sides) - 1) / 2) * width, [100 * d.class_share.get(n, 0) for n in names], width,
                    label=label)
        bins = np.arange(len(d.confidence_histogram)) / len(d.confidence_histogram)
        confidence.step(bins, [100 * v for v in d.confidence_histogram], where="post", label=label)
    classes.set_xticks(x, names, rotation=90, fontsize=7)
    classes.set_ylabel("pixels (%)")
    classes.set_title("class shares")
    confidence.set_xlabel("top class probability")
    confidence.set_ylabel("pixels (%)")
    confidence.set_title("confidence")
    for ax in (classes, confidence):
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def review_sheet(items: list[dict], path: str, thumb: int = 256) -> str:
    """One image for a person to look at: per item (least confident first) a caption with its path and
    mean confidence over its overlay and, when given, its confidence map (dark: unsure), each at most
    `thumb` pixels on its long side. Items: {"title", "overlay" H×W×3 uint8, "confidence" H×W uint8 or
    None}. Pasted with PIL, not drawn by matplotlib: a nightly run makes one (~0.1 s instead of ~2.5)."""
    from PIL import Image, ImageDraw

    def fitted(pixels: np.ndarray) -> Image.Image:
        image = Image.fromarray(pixels).convert("RGB")
        factor = thumb / max(image.size)
        return image.resize((max(1, round(image.width * factor)), max(1, round(image.height * factor))),
                            Image.Resampling.NEAREST)  # masks: keep class edges sharp

    pad, caption = 6, 14
    rows = [[fitted(item["overlay"])] + ([fitted(item["confidence"])] if item["confidence"] is not None else [])
            for item in items]
    width = max(sum(t.width + pad for t in row) for row in rows) + pad
    height = sum(caption + max(t.height for t in row) + pad for row in rows) + pad
    sheet = Image.new("RGB", (width, height), "white")
    draw, y = ImageDraw.Draw(sheet), pad
    for item, row in zip(items, rows):
        draw.text((pad, y), item["title"], fill="black")
        x, y = pad, y + caption
        for tile in row:
            sheet.paste(tile, (x, y))
            x += tile.width + pad
        y += max(t.height for t in row) + pad
    sheet.save(path)
    return path
