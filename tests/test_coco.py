"""MS-COCO for the paper's pre-training: a synthetic instances tree in the release layout,
preprocessed with Ray in both label modes, every row checked against pycocotools' own
`COCO.annToMask`; bad items recorded; a 2-worker training run on it learns."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from deeplab_core.data.codec import decode_label
from deeplab_core.data.labels import COCO_CLASSES, VOC_CLASSES
from deeplab_core.data.synth import write_coco
from pipelines.datasets import load_manifest, read_rows, split_files
from pipelines.preprocess import preprocess
from tests.test_train import initial_miou, tiny_config

SIZE = (80, 60)
VOC_NAMES = {"airplane": "aeroplane", "dining table": "diningtable", "motorcycle": "motorbike",
             "potted plant": "pottedplant", "couch": "sofa", "tv": "tvmonitor"}


def expected(coco: COCO, image_id: int, labels: str) -> np.ndarray:
    """The label as the DeepLab recipe defines it, from pycocotools' masks: objects largest first,
    crowds 255 where no object is."""
    info = coco.loadImgs(image_id)[0]
    out = np.zeros((info["height"], info["width"]), np.uint8)
    crowd = np.zeros_like(out, dtype=bool)
    for ann in sorted(coco.loadAnns(coco.getAnnIds(imgIds=image_id)), key=lambda a: (-a["area"], a["id"])):
        mask = coco.annToMask(ann).astype(bool)
        name = coco.loadCats(ann["category_id"])[0]["name"]
        if ann["iscrowd"]:
            crowd |= mask
        elif labels == "all":
            out[mask] = COCO_CLASSES.index(name)
        elif VOC_NAMES.get(name, name) in VOC_CLASSES:
            out[mask] = VOC_CLASSES.index(VOC_NAMES.get(name, name))
    out[crowd & (out == 0)] = 255
    return out


@pytest.fixture(scope="module")
def coco_tree(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    write_coco(root, train=9, val=3, seed=4, size=SIZE)
    return root


@pytest.mark.parametrize("labels", ["voc", "all"])
def test_rows_are_pycocotools_masks_painted_largest_first(coco_tree, tmp_path, labels):
    out = tmp_path / "pq"
    summary = preprocess("coco", str(coco_tree), str(out), coco_labels=labels)
    manifest = load_manifest(str(out))
    assert summary["errors"] == 0 and manifest["num_classes"] == (21 if labels == "voc" else 81)
    assert manifest["dataset"] == ("coco_voc" if labels == "voc" else "coco")
    values = set()
    for split in ("train2017", "val2017"):
        coco = COCO(str(coco_tree / "annotations" / f"instances_{split}.json"))
        rows = read_rows(split_files(str(out), manifest, split))
        assert len(rows) == len(coco.getImgIds())
        for row in rows:
            label = decode_label(row["label"])
            np.testing.assert_array_equal(label, expected(coco, int(row["image_id"]), labels))
            values |= set(np.unique(label).tolist())
    assert 255 in values  # crowds
    if labels == "voc":  # giraffe and umbrella are not VOC classes: background
        assert values <= {0, 255} | {VOC_CLASSES.index(n) for n in ("person", "car", "dog", "chair")}
    else:
        assert {COCO_CLASSES.index("giraffe"), COCO_CLASSES.index("umbrella")} & values


def test_bad_items_are_recorded_and_the_rest_written(ray_local, tmp_path):
    root = tmp_path / "coco"
    names = write_coco(root, train=6, val=2, seed=9, size=SIZE, year=2014)
    assert names["train2014"][0].startswith("COCO_train2014_")
    (root / "train2014" / names["train2014"][2]).unlink()  # an annotation pointing at a missing image
    path = root / "annotations" / "instances_train2014.json"
    data = json.loads(path.read_text())
    victim = next(a for a in data["annotations"] if not a["iscrowd"] and a["image_id"] == data["images"][4]["id"])
    victim["segmentation"][0][0] = SIZE[0] + 40.0  # a polygon outside the image
    path.write_text(json.dumps(data))
    out = tmp_path / "pq"
    summary = preprocess("coco", str(root), str(out))
    errors = {e["image_id"]: e["reason"] for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())}
    stems = [Path(n).stem for n in names["train2014"]]
    assert summary["errors"] == 2 and set(errors) == {stems[2], stems[4]}
    assert "missing image file" in errors[stems[2]]
    assert f"annotation {victim['id']}: polygon outside the {SIZE[0]}x{SIZE[1]} image" in errors[stems[4]]
    assert summary["rows"] == {"train2014": 4, "val2014": 2}


@pytest.mark.slow
def test_two_workers_learn_coco_voc(coco_tree, tmp_path):
    raw = tmp_path / "raw"
    write_coco(raw, train=16, val=6, seed=11, size=(64, 48), crowd_every=4)
    preprocess("coco", str(raw), str(tmp_path / "pq"))
    from pipelines.train import train

    cfg = tiny_config(str(tmp_path / "pq"), tmp_path, "data.train_split=train2017", "data.val_split=val2017",
                      "train.iterations=10", "train.checkpoint_interval=10", "train.eval_interval=10",
                      "tracking.run_name=coco")
    summary = train(cfg)
    assert summary["val_miou"] > initial_miou(cfg, str(tmp_path / "pq")) + 0.05, summary
