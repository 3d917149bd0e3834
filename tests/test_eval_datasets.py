"""Dataset readers on miniature benchmarks in the official layouts, label mappings, and the label resizing."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from diffcut_engine import InputError
from diffcut_engine.eval import datasets as D
from diffcut_engine.eval.datasets import eval_labels, get_dataset
from diffcut_engine.images import center_crop_box

from eval_fixtures import make_dataset, save_label


def write_raw(ds, sample, raw):
    """Overwrite a sample's label PNG with the given raw values (same format as the fixture)."""
    save_label(sample.label, np.asarray(raw, np.uint8).reshape(1, -1), palette=ds.layout == "devkit"
               and ds.key == "voc")


@pytest.mark.parametrize("fmt, raw, expected", [
    ("voc-devkit", [0, 1, 15, 20, 255, 21], [-1, 0, 14, 19, -1, -1]),
    ("voc-d2", [0, 14, 19, 255, 20], [0, 14, 19, -1, -1]),
    ("context-devkit", [0, 1, 59, 60], [-1, 0, 58, -1]),
    ("context-d2", [0, 58, 255, 59], [0, 58, -1, -1]),
    ("coco", [0, 1, 11, 91, 93, 156, 181, 255], [9, 11, 8, 17, 22, 23, 24, -1]),
    ("cityscapes", [0, 6, 7, 26, 33, 34, 255], [-1, -1, 0, 19, 26, -1, -1]),
    ("ade20k", [0, 1, 149, 150, 255], [0, 1, 149, -1, -1]),
])
def test_readers_find_the_images_and_map_labels(tmp_path, fmt, raw, expected):
    key, root, names, raws = make_dataset(fmt, tmp_path, n=3)
    ds = get_dataset(key, root)
    assert [s.name for s in ds] == names and len(ds) == 3
    assert not ds.complete
    assert len(ds.class_names) == ds.num_classes
    for s in ds:
        assert s.image.is_file() and s.label.is_file()
        lab = ds.load_label(s)
        assert lab.shape == raws[s.name].shape and lab.dtype == np.int16
        # the table applied to what was written
        np.testing.assert_array_equal(lab, ds.lut[raws[s.name]])
    write_raw(ds, ds[0], raw)
    np.testing.assert_array_equal(ds.load_label(0)[0], expected)


def test_layout_names_and_class_tables():
    assert D.VOC.num_classes == 21 and D.VOC.class_names[14] == "person" and D.VOC.class_names[-1] == "background"
    assert D.Context.num_classes == 60 and D.Context.class_names[58] == "wood"
    assert D.CocoStuff.num_classes == 27 and D.CocoStuff.class_names[9] == "person"
    assert D.CocoObject.num_classes == 81
    assert D.Cityscapes.class_names[19] == "car" and D.ADE20K.class_names[:2] == ("other", "wall")
    assert D.ADE20K.class_names[149] == "clock" and len(D.ADE20K_CLASSES) == 150
    assert [k for k, c in D.DATASETS.items() if c.background_merge] == ["voc", "context", "coco-object"]
    # COCO-Stuff: 182 fine indices onto all 27 coarse classes; things onto 0..11, stuff onto 12..26
    table = np.array(D.COCO_FINE_TO_COARSE)
    assert table.shape == (182,) and set(table) == set(range(27))
    assert table[:91].max() == 11 and table[91:].min() == 12
    # COCO-Object: the 80 used thing indices in order, nothing else
    lut = D.CocoObject.lut
    assert sorted(lut[lut >= 0]) == list(range(80))
    assert lut[0] == 0 and lut[12] == 11 and lut[89] == 79 and lut[11] == -1 and (lut[90:] == -1).all()
    assert D.CocoObject.class_names[11] == "stop sign" and D.CocoObject.class_names[79] == "toothbrush"


@pytest.mark.parametrize("fmt", ["voc-devkit", "context-d2", "coco", "cityscapes", "ade20k"])
def test_root_may_be_the_dataset_folder_or_its_parent(tmp_path, fmt):
    key, root, names, _ = make_dataset(fmt, tmp_path, n=2)
    inner = {"voc-devkit": root / "VOCdevkit" / "VOC2012", "context-d2": root / "pascal_ctx_d2",
             "coco": root / "coco", "cityscapes": root / "cityscapes",
             "ade20k": root / "ADEChallengeData2016"}[fmt]
    assert [s.name for s in get_dataset(key, inner)] == [s.name for s in get_dataset(key, root)] == names


def test_voc_devkit_uses_the_val_list(tmp_path):
    key, root, names, _ = make_dataset("voc-devkit", tmp_path, n=3)
    base = root / "VOCdevkit" / "VOC2012"
    # an image outside val.txt is not evaluated; the list order is kept
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(base / "JPEGImages" / "2011_999999.jpg")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(names[::-1]) + "\n")
    assert [s.name for s in get_dataset("VOC20", root)] == names[::-1]


def test_coco_curated_list_and_split_file(tmp_path):
    key, root, names, _ = make_dataset("coco", tmp_path, n=3)
    lst = root / "coco" / "curated" / "val2017" / "Coco164kFull_Stuff_Coarse_7.txt"
    lst.write_text(f"{names[2]}\n{names[0]}\n")
    assert [s.name for s in get_dataset("coco-stuff", root)] == [names[2], names[0]]
    assert [s.name for s in get_dataset("coco-object", root)] == [names[2], names[0]]
    own = tmp_path / "mine.txt"
    own.write_text(f"{names[1]}.jpg\n")
    assert [s.name for s in get_dataset("coco-stuff", root, split_file=own)] == [names[1]]
    lst.unlink()
    with pytest.raises(InputError, match="Coco164kFull_Stuff_Coarse_7.txt"):
        get_dataset("coco-stuff", root)
    # the list may also sit in coco/ itself
    (root / "coco" / "Coco164kFull_Stuff_Coarse_7.txt").write_text(names[0] + "\n")
    assert len(get_dataset("coco-stuff", root)) == 1


def test_split_file_selects_images(tmp_path):
    key, root, names, _ = make_dataset("ade20k", tmp_path, n=3)
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{names[1]}\n\n{names[0]}\n")
    assert [s.name for s in get_dataset(key, root, split_file=ids)] == [names[1], names[0]]
    ids.write_text("ADE_val_00009999\n")
    with pytest.raises(InputError, match="ADE_val_00009999"):
        get_dataset(key, root, split_file=ids)
    with pytest.raises(InputError, match="not found"):
        get_dataset(key, root, split_file=tmp_path / "nope.txt")


@pytest.mark.parametrize("key, expected", [
    ("voc", ["SegmentationClass", "annotations_pascal20"]),
    ("context", ["SegmentationClassContext", "annotations_ctx59"]),
    ("coco-stuff", ["val2017", "stuffthingmaps"]),
    ("coco-object", ["val2017"]),
    ("cityscapes", ["leftImg8bit", "gtFine"]),
    ("ade20k", ["images/validation", "annotations/validation"]),
])
def test_missing_folders_are_named(tmp_path, key, expected):
    with pytest.raises(InputError, match="does not exist"):
        get_dataset(key, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as exc:
        get_dataset(key, tmp_path / "empty")
    for word in expected:
        assert word in str(exc.value)


def test_missing_files_and_bad_labels(tmp_path):
    key, root, names, _ = make_dataset("voc-devkit", tmp_path, n=3)
    base = root / "VOCdevkit" / "VOC2012"
    (base / "SegmentationClass" / f"{names[1]}.png").unlink()
    with pytest.raises(InputError, match=f"{names[1]}.png"):
        get_dataset(key, root)
    key, root, names, _ = make_dataset("ade20k", tmp_path / "ade", n=2)
    ds = get_dataset(key, root)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(ds[0].label)
    with pytest.raises(InputError, match="single-channel"):
        ds.load_label(0)
    ds[1].label.write_bytes(b"not a png")
    with pytest.raises(InputError, match="cannot read"):
        ds.load_label(1)
    with pytest.raises(InputError, match="unknown dataset"):
        get_dataset("kitti", root)


def _torch_reference(label, box, net, ev):
    """The official chain: crop, torchvision Resize NEAREST_EXACT, then F.interpolate (nearest)."""
    top, left, h, w = box
    x = torch.from_numpy(label[top:top + h, left:left + w].astype(np.float32))[None, None]
    x = F.interpolate(x, size=(net, net), mode="nearest-exact")
    x = F.interpolate(x, size=(ev, ev))
    return x[0, 0].numpy().astype(label.dtype)


@pytest.mark.parametrize("shape, net, ev", [((375, 500), 1024, 128), ((333, 500), 1024, 128), ((97, 61), 96, 32),
                                            ((50, 50), 64, 48), ((1024, 2048), 1024, 128)])
def test_eval_labels_follow_the_official_resizing(shape, net, ev):
    rng = np.random.default_rng(sum(shape))
    label = rng.integers(-1, 30, shape).astype(np.int16)
    box = center_crop_box(*shape)
    out = eval_labels(label, box, net, ev)
    assert out.shape == (ev, ev) and out.dtype == label.dtype
    np.testing.assert_array_equal(out, _torch_reference(label, box, net, ev))


def test_cityscapes_centre_crop():
    # a 1024x2048 frame: the centre 1023x1023 square (columns 512..1534) is evaluated
    box = center_crop_box(1024, 2048)
    assert box == (0, 512, 1023, 1023)
    cols = np.broadcast_to(np.arange(2048, dtype=np.int32), (1024, 2048))
    out = eval_labels(cols, box, 1024, 128)
    assert out.min() >= 512 and out.max() <= 1534 and out[0, 0] == 512
    with pytest.raises(InputError, match="crop box"):
        eval_labels(np.zeros((10, 10)), (0, 0, 11, 11), 16, 8)
