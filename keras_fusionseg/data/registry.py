"""Dataset registry: class names, ignore label, colour palette and label remapping.

Every dataset the library reads is described by a `DatasetInfo`. Labels reaching a model are
train ids in `[0, num_classes)` or `ignore_label` (255); a dataset whose files store other
ids (Cityscapes label ids, ADE20K with 0 = "other") carries a 256-entry `label_map` lookup
table applied when the labels are read.
"""

import dataclasses
import os

import numpy as np

IGNORE_LABEL = 255
_TFRECORD_MARKERS = (".tfrecord", ".tfrec", ".record", "*", "?", "[")


def is_tfrecord(source):
    """Whether a source name means TFRecord files: a `.tfrecord`/`.tfrec`/`.record` name or a
    glob (`*`, `?`, `[`) in its last path component."""
    return any(marker in os.path.basename(os.fspath(source)) for marker in _TFRECORD_MARKERS)


@dataclasses.dataclass(frozen=True, eq=False)  # array fields: compare by identity
class DatasetInfo:
    """Metadata of a segmentation dataset.

    Args:
        name: str, registry name (or the folder path of a user dataset).
        num_classes: int, number of train ids.
        class_names: tuple of `num_classes` str.
        ignore_label: int, label value excluded from losses and metrics.
        palette: uint8 array (num_classes, 3), display colour of each class.
        label_map: optional uint8 array (256,) mapping stored label values to train ids
            (`IGNORE_LABEL` for values that are not trained on); None when stored values
            already are train ids.
    """

    name: str
    num_classes: int
    class_names: tuple
    ignore_label: int = IGNORE_LABEL
    palette: np.ndarray = None
    label_map: np.ndarray = None

    def __post_init__(self):
        if not isinstance(self.num_classes, int) or not 1 <= self.num_classes <= 255:
            raise ValueError(
                f"Dataset {self.name!r}: `num_classes` must be an integer in [1, 255], "
                f"received {self.num_classes!r}."
            )
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"Dataset {self.name!r}: {len(self.class_names)} class names for "
                f"{self.num_classes} classes."
            )
        palette = default_palette(self.num_classes) if self.palette is None else self.palette
        palette = np.asarray(palette, dtype=np.uint8)
        if palette.shape != (self.num_classes, 3):
            raise ValueError(
                f"Dataset {self.name!r}: `palette` must have shape ({self.num_classes}, 3), "
                f"received {palette.shape}."
            )
        object.__setattr__(self, "palette", palette)
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if self.label_map is not None:
            table = np.asarray(self.label_map, dtype=np.uint8)
            if table.shape != (256,):
                raise ValueError(
                    f"Dataset {self.name!r}: `label_map` must have 256 entries, "
                    f"received shape {table.shape}."
                )
            object.__setattr__(self, "label_map", table)


def default_palette(num_classes):
    """Distinct colours by spreading the bits of the class id over R, G and B.

    The PASCAL VOC devkit colour map: class 1 is dark red, 2 dark green, 3 olive, ...
    """
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for class_id in range(num_classes):
        value, color = class_id, [0, 0, 0]
        for shift in range(7, -1, -1):
            for channel in range(3):
                color[channel] |= ((value >> channel) & 1) << shift
            value >>= 3
        palette[class_id] = color
    return palette


def shifted_label_map(num_stored):
    """Table for datasets storing 0 = "unlabelled" and classes as 1..num_stored."""
    table = np.full(256, IGNORE_LABEL, dtype=np.uint8)
    table[1 : num_stored + 1] = np.arange(num_stored, dtype=np.uint8)
    return table


def _table(pairs):
    table = np.full(256, IGNORE_LABEL, dtype=np.uint8)
    for stored, train_id in pairs:
        table[stored] = train_id
    return table


_DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(info):
    """Adds a `DatasetInfo` to the registry under `info.name`."""
    if info.name in _DATASETS:
        raise ValueError(f"Dataset {info.name!r} is registered twice.")
    _DATASETS[info.name] = info
    return info


def list_datasets():
    """Names of all registered datasets, sorted."""
    return sorted(_DATASETS)


def get_dataset_info(name, *, num_classes=None, class_names=None):
    """Metadata of a registered dataset, or of a user folder.

    Args:
        name: a name from `list_datasets()`, the path of a user folder (`images/<split>`,
            `labels/<split>`, optional `classes.txt` with one name a line), or a TFRecord
            file or glob (may hold `{split}`; its labels are train ids).
        num_classes: int, required for a user folder without `classes.txt` and for
            TFRecords unless `class_names` is given.
        class_names: optional names for a user folder or TFRecords (default `class_0`,
            `class_1`, ...).

    Returns:
        A `DatasetInfo`.
    """
    if name in _DATASETS:
        return _DATASETS[name]
    if isinstance(name, str | os.PathLike) and os.path.isdir(name):
        return folder_dataset_info(name, num_classes=num_classes, class_names=class_names)
    if isinstance(name, str | os.PathLike) and is_tfrecord(os.fspath(name)):
        if num_classes is None and class_names is None:
            raise ValueError(
                f"TFRecords {os.fspath(name)!r} do not record their classes: pass "
                "`num_classes` or `class_names`."
            )
        if num_classes is None:
            num_classes = len(class_names)
        if class_names is None:
            class_names = [f"class_{i}" for i in range(num_classes)]
        return DatasetInfo(
            name=os.fspath(name), num_classes=num_classes, class_names=tuple(class_names)
        )
    raise ValueError(
        f"Unknown dataset {name!r}: not a registered name ({list_datasets()}), not a folder "
        "and not a TFRecord file or glob."
    )


def folder_dataset_info(path, *, num_classes=None, class_names=None):
    """`DatasetInfo` of a user folder; names come from `classes.txt` when present."""
    path = os.fspath(path)
    classes_file = os.path.join(path, "classes.txt")
    if class_names is None and os.path.isfile(classes_file):
        with open(classes_file, encoding="utf-8") as handle:
            class_names = [line.strip() for line in handle if line.strip()]
    if num_classes is None:
        if class_names is None:
            raise ValueError(f"Folder dataset {path!r} has no classes.txt: pass `num_classes`.")
        num_classes = len(class_names)
    if class_names is None:
        class_names = [f"class_{i}" for i in range(num_classes)]
    return DatasetInfo(name=path, num_classes=num_classes, class_names=tuple(class_names))


# ----------------------------------------------------------------------------------------
# Built-in metadata (facts from each dataset's documentation).

PASCAL_VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

# (label id, train id, name, colour) for the 19 Cityscapes evaluation classes.
CITYSCAPES_CLASSES = (
    (7, 0, "road", (128, 64, 128)),
    (8, 1, "sidewalk", (244, 35, 232)),
    (11, 2, "building", (70, 70, 70)),
    (12, 3, "wall", (102, 102, 156)),
    (13, 4, "fence", (190, 153, 153)),
    (17, 5, "pole", (153, 153, 153)),
    (19, 6, "traffic light", (250, 170, 30)),
    (20, 7, "traffic sign", (220, 220, 0)),
    (21, 8, "vegetation", (107, 142, 35)),
    (22, 9, "terrain", (152, 251, 152)),
    (23, 10, "sky", (70, 130, 180)),
    (24, 11, "person", (220, 20, 60)),
    (25, 12, "rider", (255, 0, 0)),
    (26, 13, "car", (0, 0, 142)),
    (27, 14, "truck", (0, 0, 70)),
    (28, 15, "bus", (0, 60, 100)),
    (31, 16, "train", (0, 80, 100)),
    (32, 17, "motorcycle", (0, 0, 230)),
    (33, 18, "bicycle", (119, 11, 32)),
)

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator",
    "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door",
    "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower",
    "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt",
    "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan",
    "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)  # fmt: skip

PASCAL_CONTEXT_CLASSES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book",
    "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
    "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food",
    "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse",
    "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves",
    "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck",
    "tvmonitor", "wall", "water", "window", "wood",
)  # fmt: skip

# The 11-class CamVid benchmark (SegNet version) and its usual display colours.
CAMVID_CLASSES = (
    ("Sky", (128, 128, 128)),
    ("Building", (128, 0, 0)),
    ("Pole", (192, 192, 128)),
    ("Road", (128, 64, 128)),
    ("Pavement", (60, 40, 222)),
    ("Tree", (128, 128, 0)),
    ("SignSymbol", (192, 128, 128)),
    ("Fence", (64, 64, 128)),
    ("Car", (64, 0, 128)),
    ("Pedestrian", (64, 64, 0)),
    ("Bicyclist", (0, 128, 192)),
)

SYNTHETIC_SHAPES_CLASSES = ("background", "circle", "rectangle", "triangle", "ring", "ellipse")

register_dataset(DatasetInfo("pascal_voc", 21, PASCAL_VOC_CLASSES))
register_dataset(
    DatasetInfo(
        "cityscapes",
        19,
        tuple(name for _, _, name, _ in CITYSCAPES_CLASSES),
        palette=[color for *_, color in CITYSCAPES_CLASSES],
        label_map=_table((label_id, train_id) for label_id, train_id, *_ in CITYSCAPES_CLASSES),
    )
)
register_dataset(DatasetInfo("ade20k", 150, ADE20K_CLASSES, label_map=shifted_label_map(150)))
register_dataset(
    DatasetInfo("pascal_context", 59, PASCAL_CONTEXT_CLASSES, label_map=shifted_label_map(59))
)
register_dataset(DatasetInfo("pascal_context_60", 60, ("background",) + PASCAL_CONTEXT_CLASSES))
register_dataset(
    DatasetInfo(
        "camvid",
        11,
        tuple(name for name, _ in CAMVID_CLASSES),
        palette=[color for _, color in CAMVID_CLASSES],
    )
)
register_dataset(
    DatasetInfo("isbi2012_membrane", 2, ("membrane", "cell"), palette=[(0, 0, 0), (255, 255, 255)])
)
register_dataset(DatasetInfo("synthetic_shapes", 6, SYNTHETIC_SHAPES_CLASSES))
# Oxford-IIIT Pet trimaps store 1 = pet, 2 = background, 3 = border (not classified).
register_dataset(
    DatasetInfo("oxford_iiit_pet", 2, ("background", "pet"), label_map=_table([(1, 1), (2, 0)]))
)
