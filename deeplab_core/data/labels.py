"""Label definitions of the datasets DeepLab was evaluated on.

Each dataset is a `LabelSet`: class names in train-id order, a colour palette and the
ignore index. Cityscapes additionally maps its 34 official labelIds to the 19 train ids.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = 255


def voc_palette(n: int = 256) -> list[tuple[int, int, int]]:
    """The PASCAL VOC colour map (bit-interleaved class index), as in the devkit's labelcolormap.m."""
    palette = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append((r, g, b))
    return palette


@dataclass(frozen=True)
class LabelSet:
    name: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def flat_palette(self) -> list[int]:
        """A 768-entry palette for PIL 'P' images: train ids coloured, ignore white-ish as in VOC."""
        colours = list(self.palette) + [(0, 0, 0)] * (256 - len(self.palette))
        colours[self.ignore_index] = (224, 224, 192)
        return [v for rgb in colours for v in rgb]

    def colorize(self, label: np.ndarray) -> np.ndarray:
        """H×W train ids -> H×W×3 uint8 colours."""
        return np.asarray(self.flat_palette(), dtype=np.uint8).reshape(256, 3)[label]

    def blend(self, image: np.ndarray, label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
        """The label's colours laid over an H×W×3 uint8 image."""
        return ((1 - alpha) * image + alpha * self.colorize(label)).astype(np.uint8)

    def to_dict(self) -> dict:
        return {"dataset": self.name, "num_classes": self.num_classes, "classes": list(self.classes),
                "palette": [list(c) for c in self.palette], "ignore_index": self.ignore_index}


VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
               "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")
VOC = LabelSet("voc", VOC_CLASSES, tuple(voc_palette(len(VOC_CLASSES))))


@dataclass(frozen=True)
class CityscapesLabel:
    name: str
    id: int
    train_id: int
    has_instances: bool
    color: tuple[int, int, int]


# The official table from cityscapesScripts/helpers/labels.py (license plate, id -1, is not a labelId).
CITYSCAPES_LABELS = (
    CityscapesLabel("unlabeled", 0, 255, False, (0, 0, 0)),
    CityscapesLabel("ego vehicle", 1, 255, False, (0, 0, 0)),
    CityscapesLabel("rectification border", 2, 255, False, (0, 0, 0)),
    CityscapesLabel("out of roi", 3, 255, False, (0, 0, 0)),
    CityscapesLabel("static", 4, 255, False, (0, 0, 0)),
    CityscapesLabel("dynamic", 5, 255, False, (111, 74, 0)),
    CityscapesLabel("ground", 6, 255, False, (81, 0, 81)),
    CityscapesLabel("road", 7, 0, False, (128, 64, 128)),
    CityscapesLabel("sidewalk", 8, 1, False, (244, 35, 232)),
    CityscapesLabel("parking", 9, 255, False, (250, 170, 160)),
    CityscapesLabel("rail track", 10, 255, False, (230, 150, 140)),
    CityscapesLabel("building", 11, 2, False, (70, 70, 70)),
    CityscapesLabel("wall", 12, 3, False, (102, 102, 156)),
    CityscapesLabel("fence", 13, 4, False, (190, 153, 153)),
    CityscapesLabel("guard rail", 14, 255, False, (180, 165, 180)),
    CityscapesLabel("bridge", 15, 255, False, (150, 100, 100)),
    CityscapesLabel("tunnel", 16, 255, False, (150, 120, 90)),
    CityscapesLabel("pole", 17, 5, False, (153, 153, 153)),
    CityscapesLabel("polegroup", 18, 255, False, (153, 153, 153)),
    CityscapesLabel("traffic light", 19, 6, False, (250, 170, 30)),
    CityscapesLabel("traffic sign", 20, 7, False, (220, 220, 0)),
    CityscapesLabel("vegetation", 21, 8, False, (107, 142, 35)),
    CityscapesLabel("terrain", 22, 9, False, (152, 251, 152)),
    CityscapesLabel("sky", 23, 10, False, (70, 130, 180)),
    CityscapesLabel("person", 24, 11, True, (220, 20, 60)),
    CityscapesLabel("rider", 25, 12, True, (255, 0, 0)),
    CityscapesLabel("car", 26, 13, True, (0, 0, 142)),
    CityscapesLabel("truck", 27, 14, True, (0, 0, 70)),
    CityscapesLabel("bus", 28, 15, True, (0, 60, 100)),
    CityscapesLabel("caravan", 29, 255, True, (0, 0, 90)),
    CityscapesLabel("trailer", 30, 255, True, (0, 0, 110)),
    CityscapesLabel("train", 31, 16, True, (0, 80, 100)),
    CityscapesLabel("motorcycle", 32, 17, True, (0, 0, 230)),
    CityscapesLabel("bicycle", 33, 18, True, (119, 11, 32)),
)
_CS_TRAIN = sorted((l for l in CITYSCAPES_LABELS if l.train_id != IGNORE_INDEX), key=lambda l: l.train_id)
CITYSCAPES = LabelSet("cityscapes", tuple(l.name for l in _CS_TRAIN), tuple(l.color for l in _CS_TRAIN))

# Lookup tables: index with a uint8 array to convert a whole label map at once.
LABEL_ID_TO_TRAIN_ID = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _l in CITYSCAPES_LABELS:
    LABEL_ID_TO_TRAIN_ID[_l.id] = _l.train_id
TRAIN_ID_TO_LABEL_ID = np.zeros(256, dtype=np.uint8)  # ignore -> 0 "unlabeled"
for _l in _CS_TRAIN:
    TRAIN_ID_TO_LABEL_ID[_l.train_id] = _l.id


def cityscapes_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    return LABEL_ID_TO_TRAIN_ID[label_ids]


def cityscapes_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    return TRAIN_ID_TO_LABEL_ID[train_ids]


# PASCAL-Context, the 59 most frequent classes plus background as evaluated in the DeepLab paper.
CONTEXT_CLASSES = (
    "background", "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book",
    "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer",
    "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground",
    "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform",
    "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa",
    "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood")
PASCAL_CONTEXT = LabelSet("pascal_context", CONTEXT_CLASSES, tuple(voc_palette(len(CONTEXT_CLASSES))))

PERSON_PART_CLASSES = ("background", "head", "torso", "upper arms", "lower arms", "upper legs", "lower legs")
PASCAL_PERSON_PART = LabelSet("pascal_person_part", PERSON_PART_CLASSES,
                              tuple(voc_palette(len(PERSON_PART_CLASSES))))

# MS-COCO instance categories (id, name): 80 of ids 1..90.
COCO_CATEGORIES = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"),
    (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"),
    (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"),
    (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"),
    (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
    (89, "hair drier"), (90, "toothbrush"))
# The 20 COCO categories that are VOC classes, by COCO's name -> VOC's (the DeepLab COCO pre-training).
COCO_TO_VOC = {"airplane": "aeroplane", "bicycle": "bicycle", "bird": "bird", "boat": "boat", "bottle": "bottle",
               "bus": "bus", "car": "car", "cat": "cat", "chair": "chair", "cow": "cow",
               "dining table": "diningtable", "dog": "dog", "horse": "horse", "motorcycle": "motorbike",
               "person": "person", "potted plant": "pottedplant", "sheep": "sheep", "couch": "sofa",
               "train": "train", "tv": "tvmonitor"}
COCO_CLASSES = ("background",) + tuple(name for _, name in COCO_CATEGORIES)
COCO = LabelSet("coco", COCO_CLASSES, tuple(voc_palette(len(COCO_CLASSES))))
COCO_VOC = LabelSet("coco_voc", VOC_CLASSES, VOC.palette)  # COCO labelled with VOC's 21 classes

LABEL_SETS = {ls.name: ls for ls in (VOC, CITYSCAPES, PASCAL_CONTEXT, PASCAL_PERSON_PART, COCO, COCO_VOC)}


# The median long side of each dataset's images (VOC and its relatives ~500×375, Cityscapes 2048×1024,
# COCO ≤640): the scale of a model trained on one, for a model.json that cannot measure it (an import).
TYPICAL_LONG_SIDE = {"voc": 500, "cityscapes": 2048, "pascal_context": 500, "pascal_person_part": 500,
                     "coco": 640, "coco_voc": 640}


def label_set_of(spec: dict) -> LabelSet:
    """The label set a saved model or dataset manifest describes (its own classes and palette)."""
    return LabelSet(spec["dataset"], tuple(spec["classes"]), tuple(tuple(c) for c in spec["palette"]),
                    spec.get("ignore_index", IGNORE_INDEX))


def label_set(name: str) -> LabelSet:
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(LABEL_SETS)}") from None
