"""Readers for the six benchmarks of DiffCut, in their official on-disk layouts.

Each reader lists (image, label) file pairs of the validation split, checks that the folders and files are
there (a missing or malformed folder raises :class:`~diffcut_engine.errors.InputError` naming what is missing),
and maps raw label values to evaluation classes with a 256-entry lookup table (``-1`` = ignore, or background
for the datasets with a background merge). Class ids, ignore rules and image lists follow DiffCut's
``dataloader/iterator.py`` and ``eval_diffcut.py`` (see ``docs/EVAL.md``):

=============  ===  ==========  =========================================================================
key            N    bg merge    labels
=============  ===  ==========  =========================================================================
voc            21   yes         VOC 2012 val (1,449): 1..20 -> 0..19; 0 (background) and 255 (void) -> -1
context        60   yes         Pascal Context 59 val (5,105): 59 classes -> 0..58; background -> -1
coco-stuff     27   no          COCO-Stuff val2017, curated 2,175-image list: 182 fine -> 27 coarse
coco-object    81   yes         same images: the 80 thing classes -> 0..79; stuff and unlabeled -> -1
cityscapes     27   no          val (500): labelIds 7..33 -> 0..26; others -> -1
ade20k         150  no          ADEChallengeData2016 val (2,000): labels as-is, 0..149; 150 and 255 -> -1
=============  ===  ==========  =========================================================================

Images and labels are both centre-cropped to the square of side ``min(H, W) - 1`` (for Cityscapes' 1024x2048
frames, the centre 1023x1023), then the label is resized with nearest-exact to the network size and with
nearest to the evaluation size, as the official code does (:func:`eval_labels`).

This module imports numpy and Pillow only; :func:`eval_labels` imports torch when first called.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError

logger = logging.getLogger("diffcut_engine")

__all__ = [
    "Sample",
    "SegmentationDataset",
    "VOC",
    "Context",
    "CocoStuff",
    "CocoObject",
    "Cityscapes",
    "ADE20K",
    "DATASETS",
    "ALIASES",
    "get_dataset",
    "eval_labels",
    "COCO_FINE_TO_COARSE",
    "COCO_CURATED_LIST",
]

IGNORE = -1

# ------------------------------------------------------------------------------------------------------------
# Class tables
# ------------------------------------------------------------------------------------------------------------

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

CONTEXT59_CLASSES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle", "building",
    "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog", "door",
    "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain",
    "mouse", "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign",
    "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window",
    "wood",
)

#: The 27 coarse COCO-Stuff classes (12 thing super-categories, then 15 stuff ones), in STEGO/PiCIE order.
COCO_STUFF27_CLASSES = (
    "electronic", "appliance", "food", "furniture", "indoor", "kitchen", "accessory", "animal", "outdoor",
    "person", "sports", "vehicle", "ceiling", "floor", "food-stuff", "furniture-stuff", "rawmaterial", "textile",
    "wall", "window", "building", "ground", "plant", "sky", "solid", "structural", "water",
)

#: Fine COCO-Stuff index (the ``stuffthingmaps`` PNG value, category id - 1, 0..181) -> coarse class (0..26).
#: This is ``fine_to_coarse_dict.pickle["fine_index_to_coarse_index"]`` of IIC/PiCIE as shipped by DiffCut
#: (identical to the table in STEGO's ``data.py``); 255 (unlabeled) is ignored.
COCO_FINE_TO_COARSE = (
    9, 11, 11, 11, 11, 11, 11, 11, 11, 8, 8, 8, 8, 8, 8, 7, 7, 7, 7, 7,                 # 0-19
    7, 7, 7, 7, 7, 6, 6, 6, 6, 6, 6, 6, 6, 10, 10, 10, 10, 10, 10, 10,                  # 20-39
    10, 10, 10, 5, 5, 5, 5, 5, 5, 5, 5, 2, 2, 2, 2, 2, 2, 2, 2, 2,                      # 40-59
    2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 0, 0, 0, 0, 0, 0, 1, 1, 1,                         # 60-79
    1, 1, 1, 4, 4, 4, 4, 4, 4, 4, 4, 17, 17, 22, 20, 20, 22, 15, 25, 16,                # 80-99
    13, 12, 12, 17, 17, 23, 15, 15, 17, 15, 21, 15, 25, 13, 13, 13, 13, 13, 22, 26,     # 100-119
    14, 14, 15, 22, 21, 21, 24, 20, 22, 15, 17, 16, 15, 22, 24, 21, 17, 25, 16, 21,     # 120-139
    17, 22, 16, 21, 21, 25, 21, 26, 21, 24, 20, 17, 14, 21, 26, 15, 23, 20, 21, 24,     # 140-159
    15, 24, 22, 25, 15, 20, 17, 17, 22, 14, 18, 18, 18, 18, 18, 18, 18, 26, 26, 19,     # 160-179
    19, 24,                                                                             # 180-181
)

#: The 80 COCO thing classes in category-id order.
COCO_THING_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)

#: Thing indices (category id - 1) of the 91-id COCO list that no annotation uses (street sign, hat, shoe,
#: eye glasses, plate, mirror, window, desk, door, blender, hair brush).
COCO_UNUSED_THING_INDICES = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "parking", "rail track", "building", "wall", "fence", "guard rail", "bridge", "tunnel",
    "pole", "polegroup", "traffic light", "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "caravan", "trailer", "train", "motorcycle", "bicycle",
)

#: ADE20K's 150 classes (label value k + 1 is class k); the official DiffCut eval does not shift labels, so
#: evaluation class 0 is the unlabelled value 0 ("other") and the last class, "flag" (value 150), is ignored.
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel",
    "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

#: File name of the curated COCO-Stuff list (IIC, Ji et al. 2019) used by PiCIE, STEGO, DiffSeg and DiffCut.
COCO_CURATED_LIST = "Coco164kFull_Stuff_Coarse_7.txt"

#: Published mIoU (%) to print beside the engine's: DiffCut (SSD-1B, tau 0.5, alpha 10, PAMR) and DiffSeg as
#: re-run by the DiffCut authors.
PUBLISHED = {
    "voc": {"DiffCut": 65.2, "DiffSeg": 49.8},
    "context": {"DiffCut": 56.5, "DiffSeg": 48.8},
    "coco-object": {"DiffCut": 34.1, "DiffSeg": 23.2},
    "coco-stuff": {"DiffCut": 49.1, "DiffSeg": 44.2},
    "cityscapes": {"DiffCut": 30.6, "DiffSeg": 16.8},
    "ade20k": {"DiffCut": 44.3, "DiffSeg": 37.7},
}


def _lut(mapping: Dict[int, int]) -> np.ndarray:
    lut = np.full(256, IGNORE, dtype=np.int16)
    for raw, cls in mapping.items():
        lut[raw] = cls
    lut.setflags(write=False)
    return lut


# ------------------------------------------------------------------------------------------------------------
# Samples and the base reader
# ------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    """One image of a benchmark.

    Attributes
    ----------
    name : str
        Identifier, unique in the dataset (the file stem; ``city/stem`` for Cityscapes).
    image : pathlib.Path
        The RGB image file.
    label : pathlib.Path
        The label PNG.
    """

    name: str
    image: Path
    label: Path


class SegmentationDataset:
    """Base class of the benchmark readers: a sequence of :class:`Sample` plus the label lookup table.

    Parameters
    ----------
    root : str or pathlib.Path
        The dataset folder (see each subclass for the tree it expects; the parent folder that holds it under
        its usual name is accepted too).
    split_file : str or pathlib.Path, optional
        A text file with one image id (file stem) per line: evaluate those images, in that order, instead of
        the default list.

    Attributes
    ----------
    key : str
        Registry name (``voc``, ``context``, ``coco-stuff``, ``coco-object``, ``cityscapes``, ``ade20k``).
    num_classes : int
        N, background included where there is one.
    class_names : tuple of str
        N names.
    background_merge : bool
        Whether the protocol merges unmatched clusters into background (VOC, Context, COCO-Object).
    expected_size : int
        Number of images of the official split.
    lut : numpy.ndarray
        (256,) int16: raw label value -> class id or -1.
    layout : str
        Which of the accepted layouts was found.
    samples : list of Sample
    """

    key = ""
    title = ""
    num_classes = 0
    class_names: Tuple[str, ...] = ()
    background_merge = False
    expected_size = 0
    lut = np.full(256, IGNORE, dtype=np.int16)
    #: True where ``_find`` reads the image list itself (COCO's curated list).
    _lists_in_find = False

    def __init__(self, root, *, split_file=None):
        self.root = Path(root).expanduser()
        if not self.root.exists():
            raise InputError(f"{self.title} root {self.root} does not exist")
        if not self.root.is_dir():
            raise InputError(f"{self.title} root {self.root} is not a folder")
        self.split_file = Path(split_file).expanduser() if split_file is not None else None
        self.layout, self.samples = self._find()
        if self.split_file is not None and not self._lists_in_find:
            self.samples = self._select(self.samples, _read_id_list(self.split_file))
        if not self.samples:
            raise InputError(f"{self.title}: no images found under {self.root} ({self.layout} layout)")
        missing = [s for s in self.samples if not s.image.is_file() or not s.label.is_file()]
        if missing:
            first = missing[0]
            what = first.image if not first.image.is_file() else first.label
            raise InputError(f"{self.title}: {len(missing)} of {len(self.samples)} listed images lack a file, "
                             f"e.g. {what}")
        if self.expected_size and len(self.samples) != self.expected_size:
            logger.warning("%s: %d images found, the official split has %d; numbers will not be comparable "
                           "with the published ones", self.title, len(self.samples), self.expected_size)

    # -------------------------------------------------------------------------------------------- subclasses
    def _find(self) -> Tuple[str, List[Sample]]:
        raise NotImplementedError

    # -------------------------------------------------------------------------------------------- sequence
    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __repr__(self):
        return f"{type(self).__name__}(root={str(self.root)!r}, layout={self.layout!r}, images={len(self)})"

    @property
    def complete(self) -> bool:
        """True if the image count is that of the official split."""
        return len(self.samples) == self.expected_size

    # -------------------------------------------------------------------------------------------- labels
    def map_labels(self, raw) -> np.ndarray:
        """Raw label values (uint8 array) -> class ids (int16; -1 = ignore) through :attr:`lut`."""
        raw = np.asarray(raw)
        if raw.dtype != np.uint8:
            if not np.issubdtype(raw.dtype, np.integer) or raw.size and (raw.min() < 0 or raw.max() > 255):
                raise InputError(f"{self.title}: label values must be 8-bit, got dtype {raw.dtype}")
            raw = raw.astype(np.uint8)
        return self.lut[raw]

    def load_label(self, sample) -> np.ndarray:
        """Read and map the label of a sample (or an index).

        Returns
        -------
        numpy.ndarray
            (H, W) int16 class ids at the image's full size; ``-1`` = ignore (background for the datasets with
            a background merge).

        Raises
        ------
        InputError
            If the file cannot be read or is not a single-channel 8-bit PNG.
        """
        from PIL import Image, UnidentifiedImageError

        if not isinstance(sample, Sample):
            sample = self.samples[sample]
        try:
            with Image.open(sample.label) as im:
                mode = im.mode
                raw = np.array(im)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise InputError(f"{self.title}: cannot read label {sample.label} ({exc})") from exc
        if raw.ndim != 2:
            raise InputError(f"{self.title}: label {sample.label} must be a single-channel (palette or grayscale) "
                             f"PNG of class ids, got mode {mode}")
        # the image is read as viewers show it (its EXIF orientation applied, diffcut_engine.images); the label
        # is drawn on the image's stored pixels, so it takes the same turn
        turn = _EXIF_TURNS.get(_exif_orientation(sample.image))
        if turn is not None:
            raw = np.asarray(Image.fromarray(raw).transpose(turn))
        return self.map_labels(raw)

    # -------------------------------------------------------------------------------------------- helpers
    def _select(self, samples: List[Sample], ids: List[str]) -> List[Sample]:
        by_name = {s.name: s for s in samples}
        by_stem = {Path(s.name).name: s for s in samples}
        out, missing = [], []
        for i in ids:
            s = by_name.get(i) or by_stem.get(i)
            (out if s is not None else missing).append(s if s is not None else i)
        if missing:
            raise InputError(f"{self.title}: {len(missing)} ids of {self.split_file} have no image, "
                             f"e.g. {missing[0]!r}")
        return out


def _read_id_list(path: Path) -> List[str]:
    if not path.is_file():
        raise InputError(f"image list {path} not found")
    ids = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            ids.append(line[:-4] if line.lower().endswith((".jpg", ".png")) else line)
    if not ids:
        raise InputError(f"image list {path} is empty")
    return ids


def _first_dir(candidates: Sequence[Path]) -> Optional[Path]:
    for c in candidates:
        if c.is_dir():
            return c
    return None


def _pairs_by_stem(image_dir: Path, label_dir: Path, image_ext: str, label_ext: str = ".png") -> List[Sample]:
    stems = sorted(p.name[:-len(image_ext)] for p in image_dir.iterdir() if p.name.endswith(image_ext))
    return [Sample(s, image_dir / f"{s}{image_ext}", label_dir / f"{s}{label_ext}") for s in stems]


def layout_help(cls) -> str:
    """The folder tree(s) documented in a reader's docstring (the literal block after ``::``), for messages."""
    lines = (cls.__doc__ or "").split("::", 1)[-1].splitlines()
    block = []
    for line in lines[1:]:
        if line.strip() and len(line) - len(line.lstrip()) <= 4:
            break
        block.append(line)
    return "\n" + "\n".join(line for line in block if line.strip())


# ------------------------------------------------------------------------------------------------------------
# PASCAL VOC 2012 and Pascal Context
# ------------------------------------------------------------------------------------------------------------

class _PascalBase(SegmentationDataset):
    devkit_year = ""
    devkit_list = ""          # ImageSets/... list of the val split
    devkit_labels = ""        # label folder in the devkit layout
    d2_folder = ""            # name of the prepared (FC-CLIP / ODISE) folder
    d2_labels = ""            # its label sub-folder
    devkit_lut = np.full(256, IGNORE, dtype=np.int16)

    def _find(self):
        r = self.root
        for base in (r, r / self.devkit_year, r / "VOCdevkit" / self.devkit_year):
            if (base / self.devkit_list).is_file() and (base / self.devkit_labels).is_dir() \
                    and (base / "JPEGImages").is_dir():
                ids = _read_id_list(base / self.devkit_list)
                self.lut = self.devkit_lut
                return "devkit", [Sample(i, base / "JPEGImages" / f"{i}.jpg", base / self.devkit_labels / f"{i}.png")
                                  for i in ids]
        for base in (r, r / self.d2_folder):
            images, labels = base / "images" / "validation", base / self.d2_labels / "validation"
            if images.is_dir() and labels.is_dir():
                return "d2", _pairs_by_stem(images, labels, ".jpg")
        raise InputError(f"{self.title}: {self.root} has neither layout; expected one of{layout_help(type(self))}")


class VOC(_PascalBase):
    """PASCAL VOC 2012 val, 1,449 images, 20 classes + background (``voc``; the official ``VOC20``).

    Layouts (``root`` may be any of the folders named first on a line, or their parent)::

        VOCdevkit/VOC2012/                         # the official tar (VOCtrainval_11-May-2012.tar)
            ImageSets/Segmentation/val.txt         # 1,449 ids
            JPEGImages/<id>.jpg
            SegmentationClass/<id>.png             # palette PNG: 0 background, 1..20 classes, 255 void
        pascal_voc_d2/                             # FC-CLIP's prepare_pascal_voc_sem_seg.py
            images/validation/<id>.jpg
            annotations_pascal20/validation/<id>.png   # 0..19 classes, 255 background and void

    Classes 1..20 become 0..19; background and void become -1, which the background merge turns into class
    20 (so void boundaries count as background, as in the official evaluation).

    Parameters
    ----------
    root, split_file
        See :class:`SegmentationDataset`.
    """

    key, title = "voc", "PASCAL VOC 2012"
    num_classes = 21
    class_names = VOC_CLASSES + ("background",)
    background_merge = True
    expected_size = 1449
    devkit_year, devkit_list, devkit_labels = "VOC2012", "ImageSets/Segmentation/val.txt", "SegmentationClass"
    d2_folder, d2_labels = "pascal_voc_d2", "annotations_pascal20"
    devkit_lut = _lut({k: k - 1 for k in range(1, 21)})
    lut = _lut({k: k for k in range(20)})


class Context(_PascalBase):
    """Pascal Context 59 val, 5,105 images, 59 classes + background (``context``; the official ``Context``).

    Layouts (``root`` may be any of the folders named first on a line, or their parent)::

        VOCdevkit/VOC2010/                         # mmsegmentation's pascal_context.py conversion
            ImageSets/SegmentationContext/val.txt  # 5,105 ids
            JPEGImages/<id>.jpg
            SegmentationClassContext/<id>.png      # 0 background, 1..59 classes
        pascal_ctx_d2/                             # FC-CLIP / ODISE prepare_pascal_ctx_sem_seg.py
            images/validation/<id>.jpg
            annotations_ctx59/validation/<id>.png  # 0..58 classes, 255 background

    The 59 classes become 0..58 (alphabetical, as both conversions number them); background becomes -1 and
    then class 59 through the background merge.

    Parameters
    ----------
    root, split_file
        See :class:`SegmentationDataset`.
    """

    key, title = "context", "Pascal Context 59"
    num_classes = 60
    class_names = CONTEXT59_CLASSES + ("background",)
    background_merge = True
    expected_size = 5105
    devkit_year = "VOC2010"
    devkit_list, devkit_labels = "ImageSets/SegmentationContext/val.txt", "SegmentationClassContext"
    d2_folder, d2_labels = "pascal_ctx_d2", "annotations_ctx59"
    devkit_lut = _lut({k: k - 1 for k in range(1, 60)})
    lut = _lut({k: k for k in range(59)})


# ------------------------------------------------------------------------------------------------------------
# COCO-Stuff-27 and COCO-Object
# ------------------------------------------------------------------------------------------------------------

class _CocoBase(SegmentationDataset):
    """COCO val2017 with the ``stuffthingmaps`` labels, restricted to the curated 2,175-image list.

    Layouts (``root`` is the folder holding ``val2017`` or ``images/val2017``, or its parent ``coco``)::

        coco/
            val2017/<12-digit id>.jpg                 # or images/val2017/ (DiffCut's datasets/README.md)
            annotations/val2017/<id>.png              # stuffthingmaps_trainval2017.zip; also accepted under
                                                      # stuffthingmaps/val2017/ or labels/val2017/
            curated/val2017/Coco164kFull_Stuff_Coarse_7.txt   # the 2,175 ids (or give --split-file,
                                                      # or put the file in coco/ itself)

    Label PNGs hold the fine index (COCO category id - 1): things 0..90, stuff 91..181, 255 unlabeled.
    The curated list is not part of COCO: it ships with IIC (``COCOStuff164kCurated.tar.gz``) and with the
    DiffCut repository (``dataloader/coco/val2017/Coco164kFull_Stuff_Coarse_7.txt``).

    Parameters
    ----------
    root, split_file
        See :class:`SegmentationDataset`; ``split_file`` replaces the curated list.
    """

    expected_size = 2175
    _lists_in_find = True

    def _find(self):
        r = self.root
        bases = [b for b in (r, r / "coco", r / "cocostuff") if b.is_dir()]
        for base in bases:
            images = _first_dir([base / "val2017", base / "images" / "val2017"])
            labels = _first_dir([base / "annotations" / "val2017", base / "stuffthingmaps" / "val2017",
                                 base / "stuffthingmaps_trainval2017" / "val2017", base / "labels" / "val2017"])
            if images is None or labels is None:
                continue
            if self.split_file is None:
                lists = [base / "curated" / "val2017" / COCO_CURATED_LIST, base / COCO_CURATED_LIST]
                found = next((p for p in lists if p.is_file()), None)
                if found is None:
                    raise InputError(f"{self.title}: the curated image list {COCO_CURATED_LIST} was not found at "
                                     f"{lists[0]} or {lists[1]}; get it from IIC (COCOStuff164kCurated.tar.gz) or "
                                     f"the DiffCut repository (dataloader/coco/val2017/), or pass --split-file")
                self.split_file = found
            ids = _read_id_list(self.split_file)
            return "stuffthingmaps", [Sample(i, images / f"{i}.jpg", labels / f"{i}.png") for i in ids]
        raise InputError(f"{self.title}: no val2017 images and stuffthingmaps labels under {self.root}; "
                         f"expected{layout_help(type(self))}")


class CocoStuff(_CocoBase):
    __doc__ = ("COCO-Stuff-27 (``coco-stuff``; the official ``COCO-Stuff``): 182 fine classes merged into 27 "
               "coarse ones with the IIC/PiCIE table :data:`COCO_FINE_TO_COARSE`; 255 ignored.\n\n    "
               + _CocoBase.__doc__)
    key, title = "coco-stuff", "COCO-Stuff-27"
    num_classes = 27
    class_names = COCO_STUFF27_CLASSES
    lut = _lut(dict(enumerate(COCO_FINE_TO_COARSE)))


def _coco_object_mapping() -> Dict[int, int]:
    things = [k for k in range(91) if k not in COCO_UNUSED_THING_INDICES]
    return {fine: cls for cls, fine in enumerate(things)}


class CocoObject(_CocoBase):
    __doc__ = ("COCO-Object (``coco-object``): the 80 thing classes (fine indices 0..90 less the 11 unused ids, "
               "in id order) become 0..79; stuff and unlabeled become -1, then background (class 80) through "
               "the background merge.\n\n    " + _CocoBase.__doc__)
    key, title = "coco-object", "COCO-Object"
    num_classes = 81
    class_names = COCO_THING_CLASSES + ("background",)
    background_merge = True
    lut = _lut(_coco_object_mapping())


# ------------------------------------------------------------------------------------------------------------
# Cityscapes and ADE20K
# ------------------------------------------------------------------------------------------------------------

class Cityscapes(SegmentationDataset):
    """Cityscapes val, 500 images, 27 classes (``cityscapes``).

    Layout (``root`` is ``cityscapes/`` or its parent)::

        cityscapes/
            leftImg8bit/val/<city>/<city>_<seq>_<frame>_leftImg8bit.png
            gtFine/val/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

    ``labelIds`` 7..33 (road .. bicycle) become 0..26; every other id is ignored. Only the centre
    1023x1023 crop of each 1024x2048 frame is evaluated (the generic centre crop of the protocol).

    Parameters
    ----------
    root, split_file
        See :class:`SegmentationDataset`.
    """

    key, title = "cityscapes", "Cityscapes"
    num_classes = 27
    class_names = CITYSCAPES_CLASSES
    expected_size = 500
    lut = _lut({k: k - 7 for k in range(7, 34)})

    def _find(self):
        for base in (self.root, self.root / "cityscapes"):
            images, labels = base / "leftImg8bit" / "val", base / "gtFine" / "val"
            if images.is_dir() and labels.is_dir():
                samples = []
                for city in sorted(p for p in images.iterdir() if p.is_dir()):
                    for img in sorted(city.glob("*_leftImg8bit.png")):
                        stem = img.name[:-len("_leftImg8bit.png")]
                        samples.append(Sample(f"{city.name}/{stem}", img,
                                              labels / city.name / f"{stem}_gtFine_labelIds.png"))
                return "cityscapes", samples
        raise InputError(f"{self.title}: {self.root} lacks leftImg8bit/val and gtFine/val; expected"
                         f"{layout_help(type(self))}")


class ADE20K(SegmentationDataset):
    """ADE20K (SceneParsing, A-150) val, 2,000 images (``ade20k``).

    Layout (``root`` is ``ADEChallengeData2016/`` or its parent)::

        ADEChallengeData2016/
            images/validation/ADE_val_<8 digits>.jpg
            annotations/validation/ADE_val_<8 digits>.png   # 0 other, 1..150 classes

    Labels are used **as-is**, as in the official DiffCut evaluation: value 0 ("other") is class 0, values
    1..149 are classes 1..149 (wall .. clock), and value 150 (flag) is outside the 150 classes and ignored.
    The published numbers were measured this way; the usual convention (shift by one, 0 ignored) differs.

    Parameters
    ----------
    root, split_file
        See :class:`SegmentationDataset`.
    """

    key, title = "ade20k", "ADE20K"
    num_classes = 150
    class_names = ("other",) + ADE20K_CLASSES[:149]
    expected_size = 2000
    lut = _lut({k: k for k in range(150)})

    def _find(self):
        for base in (self.root, self.root / "ADEChallengeData2016"):
            images, labels = base / "images" / "validation", base / "annotations" / "validation"
            if images.is_dir() and labels.is_dir():
                return "ADEChallengeData2016", _pairs_by_stem(images, labels, ".jpg")
        raise InputError(f"{self.title}: {self.root} lacks images/validation and annotations/validation; expected"
                         f"{layout_help(type(self))}")


# ------------------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------------------

DATASETS = {cls.key: cls for cls in (VOC, Context, CocoStuff, CocoObject, Cityscapes, ADE20K)}

#: Other accepted names (lower case), including those of the official ``--dataset_name``.
ALIASES = {
    "voc20": "voc", "voc2012": "voc", "pascal-voc": "voc",
    "context59": "context", "pascal-context": "context", "pc59": "context",
    "coco-stuff-27": "coco-stuff", "cocostuff27": "coco-stuff", "cocostuff": "coco-stuff",
    "coco-object": "coco-object", "cocoobject": "coco-object",
    "ade": "ade20k", "ade20k-150": "ade20k",
}


def get_dataset(name: str, root, *, split_file=None) -> SegmentationDataset:
    """Open a benchmark by name (see :data:`DATASETS` and :data:`ALIASES`).

    Raises
    ------
    InputError
        For an unknown name, or a root that does not hold the dataset.
    """
    key = str(name).strip().lower().replace("_", "-")
    key = ALIASES.get(key, key)
    if key not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[key](root, split_file=split_file)


# ------------------------------------------------------------------------------------------------------------
# Labels at the evaluation size
# ------------------------------------------------------------------------------------------------------------

@lru_cache(maxsize=64)
def _source_index(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """Source index of each output index of torch's 1-D ``F.interpolate(mode=mode)`` (asked of torch itself,
    so that rounding is exactly torch's)."""
    import torch
    import torch.nn.functional as F

    ramp = torch.arange(n_in, dtype=torch.float32).view(1, 1, 1, n_in)
    idx = F.interpolate(ramp, size=(1, n_out), mode=mode).view(-1)
    out = idx.to(torch.int64).numpy()
    out.setflags(write=False)
    return out


def eval_labels(labels, box: Tuple[int, int, int, int], net_size: int, eval_size: int) -> np.ndarray:
    """Ground truth as the official evaluation scores it: crop, nearest-exact to the network size, nearest to
    the evaluation size.

    Parameters
    ----------
    labels : numpy.ndarray
        (H, W) class ids at the image's full size.
    box : tuple of int
        (top, left, height, width) of the image region the prediction covers (``Segmentation.crop_box``; the
        centred square of side ``min(H, W) - 1`` in the evaluation protocol).
    net_size : int
        Side of the network input (1024 for the paper): torchvision's ``Resize(..., NEAREST_EXACT)``.
    eval_size : int
        Side of the scored maps (128 for the paper): ``F.interpolate`` with its default ``nearest``.

    Returns
    -------
    numpy.ndarray
        (eval_size, eval_size) array of the input's dtype.
    """
    labels = np.asarray(labels)
    top, left, h, w = box
    if labels.ndim != 2 or top < 0 or left < 0 or top + h > labels.shape[0] or left + w > labels.shape[1]:
        raise InputError(f"label map of shape {labels.shape} does not contain the crop box {box}")
    rows = _source_index(h, net_size, "nearest-exact")[_source_index(net_size, eval_size, "nearest")]
    cols = _source_index(w, net_size, "nearest-exact")[_source_index(net_size, eval_size, "nearest")]
    return labels[top + rows[:, None], left + cols[None, :]]


def _exif_turns() -> dict:
    from PIL import Image

    t = Image.Transpose
    return {2: t.FLIP_LEFT_RIGHT, 3: t.ROTATE_180, 4: t.FLIP_TOP_BOTTOM, 5: t.TRANSPOSE, 6: t.ROTATE_270,
            7: t.TRANSVERSE, 8: t.ROTATE_90}


#: EXIF orientation -> the transposition that shows the stored pixels upright (PIL.ImageOps.exif_transpose's).
_EXIF_TURNS = _exif_turns()


def _exif_orientation(path) -> int:
    """The EXIF orientation of an image file (1 when it has none, or it cannot be read: the image loader then
    keeps the stored orientation too)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 (a damaged EXIF block or file: the image load reports the file itself)
        return 1
