"""Preprocessing into Parquet, checked against torchvision's own readers of the same raw trees."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torchvision
from PIL import Image

from deeplab_core.data.codec import decode_row
from deeplab_core.data.labels import cityscapes_to_train_ids
from deeplab_core.data.synth import write_cityscapes, write_voc
from pipelines import storage
from pipelines.preprocess import main as preprocess_main
from pipelines.preprocess import preprocess
from tests.conftest import upload_tree


def read_rows(out: str) -> list[dict]:
    manifest = json.loads(storage.read_bytes(storage.join(out, "manifest.json")))
    rows = []
    for split in manifest["splits"].values():
        for rel in split["files"]:
            fs, path = storage.resolve(storage.join(out, rel))
            rows.extend(pq.read_table(path, filesystem=fs).to_pylist())
    return rows


@pytest.fixture(scope="module")
def voc_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    layout = write_voc(root, train=6, val=4, seed=1, size=(96, 72), sbd=True, sbd_extra=4)
    return root, layout


@pytest.fixture(scope="module")
def voc_parquet(voc_tree, ray_local, tmp_path_factory):
    root, _ = voc_tree
    out = tmp_path_factory.mktemp("voc_pq") / "ds"
    summary = preprocess("voc", str(root), str(out), aug_copies=2, seed=3, shard_size=3)
    return out, summary


def test_voc_rows_equal_torchvision_pixel_for_pixel(voc_tree, voc_parquet):
    root, layout = voc_tree
    out, summary = voc_parquet
    rows = [r for r in read_rows(str(out)) if r["variant"] == "orig"]
    for split in ("train", "val"):
        tv = torchvision.datasets.VOCSegmentation(str(root), year="2012", image_set=split, download=False)
        ours = {r["image_id"]: r for r in rows if r["split"] == split}
        assert len(tv) == len(ours) == len(layout[split])
        for i in range(len(tv)):
            image, target = tv[i]
            image_id = Path(tv.images[i]).stem
            our_image, our_label = decode_row(ours[image_id])
            assert np.array_equal(np.asarray(image), our_image)
            assert np.array_equal(np.asarray(target), our_label)
            assert 255 in our_label  # VOC's void band survives


def test_train_aug_is_the_sbd_recipe_and_matches_torchvision_sbd(voc_tree, voc_parquet):
    root, layout = voc_tree
    out, summary = voc_parquet
    rows = [r for r in read_rows(str(out)) if r["split"] == "train_aug" and r["variant"] == "orig"]
    ids = [r["image_id"] for r in rows]
    expected = (set(layout["sbd_train"]) | set(layout["sbd_val"]) | set(layout["train"])) - set(layout["val"])
    assert len(ids) == len(set(ids)) and set(ids) == expected
    sbd = torchvision.datasets.SBDataset(str(root / "benchmark_RELEASE" / "dataset"), image_set="train",
                                         mode="segmentation", download=False)
    by_id = {r["image_id"]: r for r in rows}
    checked = 0
    for i in range(len(sbd)):
        image_id = Path(sbd.images[i]).stem
        if image_id in by_id and image_id not in layout["train"]:  # SBD-only: label from the .mat
            image, target = sbd[i]
            our_image, our_label = decode_row(by_id[image_id])
            assert np.array_equal(np.asarray(image), our_image) and np.array_equal(np.asarray(target), our_label)
            checked += 1
    assert checked >= 2


def test_augmented_copies_are_rescaled_flipped_and_reproducible(voc_tree, voc_parquet, tmp_path):
    root, _ = voc_tree
    out, summary = voc_parquet
    rows = read_rows(str(out))
    aug = [r for r in rows if r["split"] == "train" and r["variant"] != "orig"]
    assert len(aug) == 2 * 6 and not [r for r in rows if r["split"] == "val" and r["variant"] != "orig"]
    scales = [float(r["variant"].split(",")[0].split("=")[1]) for r in aug]
    assert all(0.5 <= s <= 1.5 for s in scales) and len(set(scales)) > 1
    for r in aug:
        image, label = decode_row(r)
        scale = float(r["variant"][6:11])  # printed to 3 decimals: allow a pixel of rounding
        assert abs(label.shape[0] - 72 * scale) <= 1 and abs(label.shape[1] - 96 * scale) <= 1
        assert image.shape[:2] == label.shape
        assert set(np.unique(label)) <= set(range(21)) | {255}
    again = tmp_path / "again"
    preprocess("voc", str(root), str(again), splits=["train"], aug_copies=2, seed=3, shard_size=100)
    key = lambda r: (r["image_id"], r["variant"])  # noqa: E731
    assert sorted(map(key, read_rows(str(again)))) == sorted(key(r) for r in rows if r["split"] == "train")
    first = {key(r): r["label"] for r in aug}
    assert all(first[key(r)] == r["label"] for r in read_rows(str(again)) if r["variant"] != "orig")


def test_manifest_counts_and_files(voc_parquet):
    out, summary = voc_parquet
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"] == "voc" and manifest["num_classes"] == 21 and manifest["ignore_index"] == 255
    assert manifest["splits"]["train"]["rows"] == 6 * 3 and manifest["splits"]["val"]["rows"] == 4
    assert summary["rows"] == {s: v["rows"] for s, v in manifest["splits"].items()}
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet"))
    assert on_disk == sorted(f for v in manifest["splits"].values() for f in v["files"])
    assert manifest["errors"] == 0 and (out / "errors.jsonl").read_text() == ""


def test_cityscapes_rows_equal_torchvision_with_train_ids(ray_local, tmp_path):
    root = tmp_path / "cs"
    write_cityscapes(root, train=4, val=2, seed=2, size=(128, 64))
    out = tmp_path / "pq"
    summary = preprocess("cityscapes", str(root), str(out), shard_size=2)
    assert summary["rows"] == {"train": 4, "val": 2} and summary["errors"] == 0
    rows = {r["image_id"]: r for r in read_rows(str(out))}
    for split in ("train", "val"):
        tv = torchvision.datasets.Cityscapes(str(root), split=split, mode="fine", target_type="semantic")
        assert len(tv) == sum(r["split"] == split for r in rows.values())
        for i in range(len(tv)):
            image, target = tv[i]
            stem = Path(tv.images[i]).name[: -len("_leftImg8bit.png")]
            our_image, our_label = decode_row(rows[stem])
            assert np.array_equal(np.asarray(image), our_image)
            assert np.array_equal(cityscapes_to_train_ids(np.asarray(target)), our_label)
            assert 255 in our_label and our_label[our_label != 255].max() < 19


def test_bad_items_are_recorded_and_the_rest_written(ray_local, run, capsys, tmp_path):
    root = tmp_path / "raw"
    layout = write_voc(root, train=8, val=3, seed=4, size=(64, 48), sbd=True, sbd_extra=3)
    voc = root / "VOCdevkit" / "VOC2012"
    train = layout["train"]
    jpg = voc / "JPEGImages" / f"{train[0]}.jpg"
    jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])         # truncated image
    (voc / "SegmentationClass" / f"{train[1]}.png").unlink()                 # missing label
    Image.new("P", (10, 10)).save(voc / "SegmentationClass" / f"{train[2]}.png")  # size mismatch
    (voc / "JPEGImages" / f"{train[3]}.jpg").write_bytes(b"not an image at all")  # non-image
    (voc / "JPEGImages" / f"{train[4]}.jpg").write_bytes(b"")                 # zero bytes
    sbd_only = [i for i in layout["sbd_train"] if i not in train and i not in layout["val"]][0]
    (root / "benchmark_RELEASE" / "dataset" / "cls" / f"{sbd_only}.mat").write_bytes(b"MATLAB garbage")
    out = tmp_path / "pq"
    code = run(preprocess_main, ["--dataset", "voc", "--root", str(root), "--out", str(out), "--shard-size", "4"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    summary = json.loads(printed.out.strip().splitlines()[-1])
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    # train[0..4] are bad in both train and train_aug (VOC annotation wins there); the .mat only in train_aug
    assert summary["errors"] == len(errors) == 11
    reasons = {(e["split"], e["image_id"]): e["reason"] for e in errors}
    assert "missing label" in reasons[("train", train[1])] and f"{train[1]}.png" in reasons[("train", train[1])]
    assert "10x10" in reasons[("train", train[2])] and "64x48" in reasons[("train", train[2])]
    assert "not a readable image" in reasons[("train", train[0])]
    assert "empty file" in reasons[("train", train[4])]
    assert ".mat" in reasons[("train_aug", sbd_only)]
    assert summary["rows"]["train"] == 3 and summary["rows"]["val"] == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["errors"] == 11 and manifest["splits"]["train"]["examples"] == 3


def test_missing_or_misshapen_root_is_one_line_exit_2(run, capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    for root in (tmp_path / "nope", tmp_path / "empty"):
        assert run(preprocess_main, ["--dataset", "voc", "--root", str(root), "--out", str(tmp_path / "o")]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and str(root) in lines[0]
        assert not (tmp_path / "o").exists()


def test_rerun_replaces_the_dataset_whole(voc_tree, ray_local, tmp_path):
    root, _ = voc_tree
    out = tmp_path / "ds"
    preprocess("voc", str(root), str(out), aug_copies=1, shard_size=2)
    first = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet"))
    stale = out / "_staging-crashedrun" / "train" / "part-00000.parquet"  # left by a crashed run
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"partial")
    preprocess("voc", str(root), str(out), splits=["train", "val"], shard_size=5)
    manifest = json.loads((out / "manifest.json").read_text())
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet"))
    assert len(files) < len(first) and "train_aug" not in manifest["splits"]
    assert files == sorted(f for v in manifest["splits"].values() for f in v["files"])
    assert not list(out.glob("_staging-*"))
    assert sorted(r["variant"] for r in read_rows(str(out))) == ["orig"] * 10


def test_s3_round_trip_equals_local(voc_tree, voc_parquet, ray_local, s3_client):
    root, _ = voc_tree
    out, _ = voc_parquet
    upload_tree(s3_client, root, "raw-bucket", "datasets/voc")
    s3_client.create_bucket(Bucket="out-bucket")
    summary = preprocess("voc", "s3://raw-bucket/datasets/voc", "s3://out-bucket/pq", aug_copies=2, seed=3,
                         shard_size=3)
    listed = s3_client.list_objects_v2(Bucket="out-bucket", Prefix="pq/")["Contents"]
    keys = sorted(o["Key"] for o in listed)
    assert "pq/manifest.json" in keys and not [k for k in keys if "_staging" in k]
    key = lambda r: (r["split"], r["image_id"], r["variant"], r["image"], r["label"])  # noqa: E731
    remote = read_rows("s3://out-bucket/pq")
    assert sorted(map(key, remote)) == sorted(map(key, read_rows(str(out))))
    assert all(r["source"].startswith("raw-bucket/datasets/voc/") for r in remote)
    assert summary["errors"] == 0
