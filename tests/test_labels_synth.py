import hashlib

import numpy as np
from PIL import Image

from deeplab_core.data.labels import (CITYSCAPES, CITYSCAPES_LABELS, PASCAL_CONTEXT, PASCAL_PERSON_PART, VOC,
                                      cityscapes_to_label_ids, cityscapes_to_train_ids, label_set)
from deeplab_core.data.synth import render_scene, void_borders, write_cityscapes, write_voc


def test_label_sets_have_the_papers_class_counts():
    assert VOC.num_classes == 21 and VOC.palette[1] == (128, 0, 0) and VOC.palette[15] == (192, 128, 128)
    assert CITYSCAPES.num_classes == 19 and len(CITYSCAPES_LABELS) == 34
    assert PASCAL_CONTEXT.num_classes == 60 and PASCAL_CONTEXT.classes[0] == "background"
    assert PASCAL_PERSON_PART.num_classes == 7
    assert label_set("voc") is VOC


def test_cityscapes_ids_round_trip():
    label_ids = np.arange(34, dtype=np.uint8)
    train = cityscapes_to_train_ids(label_ids)
    assert train[7] == 0 and train[26] == 13 and train[33] == 18 and train[0] == 255 and train[29] == 255
    assert sorted(set(train.tolist()) - {255}) == list(range(19))
    kept = train != 255
    assert np.array_equal(cityscapes_to_label_ids(train)[kept], label_ids[kept])
    assert np.array_equal(cityscapes_to_train_ids(cityscapes_to_label_ids(np.arange(19, dtype=np.uint8))),
                          np.arange(19))


def test_scenes_are_deterministic_varied_and_scaled():
    a = render_scene(np.random.default_rng([3, 1]), 120, 160, range(1, 21))
    b = render_scene(np.random.default_rng([3, 1]), 120, 160, range(1, 21))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    fractions = []
    for i in range(40):
        _, label, _ = render_scene(np.random.default_rng([0, i]), 120, 160, range(1, 21))
        fg = label > 0
        if fg.any():
            ys, xs = np.nonzero(fg)
            fractions.append(max(np.ptp(ys) + 1, np.ptp(xs) + 1) / 120)
    assert min(fractions) < 0.15 and max(fractions) > 0.45


def test_void_band_marks_only_borders():
    label = np.zeros((20, 20), np.uint8)
    label[5:15, 5:15] = 3
    out = void_borders(label, 1)
    assert out[10, 10] == 3 and out[0, 0] == 0 and out[5, 5] == 255 and out[4, 10] == 255
    assert set(np.unique(out)) == {0, 3, 255}


def _tree_digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_synthetic_trees_are_reproducible_from_the_seed(tmp_path):
    write_voc(tmp_path / "a", 3, 2, seed=7, size=(64, 48), sbd=True)
    write_voc(tmp_path / "b", 3, 2, seed=7, size=(64, 48), sbd=True)
    write_voc(tmp_path / "c", 3, 2, seed=8, size=(64, 48), sbd=True)
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b") != _tree_digest(tmp_path / "c")


def test_cityscapes_tree_files(tmp_path):
    names = write_cityscapes(tmp_path, 2, 1, seed=0, size=(128, 64))
    stem = names["train"][0]
    city = stem.split("_")[0]
    gt = tmp_path / "gtFine" / "train" / city
    ids = np.array(Image.open(gt / f"{stem}_gtFine_labelIds.png"))
    inst = np.array(Image.open(gt / f"{stem}_gtFine_instanceIds.png"))
    colour = np.array(Image.open(gt / f"{stem}_gtFine_color.png"))
    assert ids.shape == (64, 128) and ids.max() < 34 and 1 in ids  # the ego-vehicle void band
    has_inst = np.isin(ids, [l.id for l in CITYSCAPES_LABELS if l.has_instances])
    assert np.array_equal(inst[~has_inst], ids[~has_inst]) and np.all(inst[has_inst] // 1000 == ids[has_inst])
    road = ids == 7
    assert road.any() and np.all(colour[road] == (128, 64, 128))
