"""End to end on real photos: the offline backbone through the Engine and the CLI, scored against hand-drawn masks.

The reference masks (tests/data/*.png) are polygons placed by hand on the scikit-image photos by
tests/data/make_reference_masks.py; they owe nothing to this engine.
"""

import os
import sys

import numpy as np
import pytest
from PIL import Image

from diffcut_engine import Engine

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "data"))
from make_reference_masks import photo, reference_mask  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: (mask file, photo, lower bound on the IoU of the best single segment with the object). This test itself measured,
#: at the engine's presets (768 px, tau 0.08, PAMR), cat 0.90 and cup and saucer 0.87 when it was written.
CASES = [("chelsea_cat_mask.png", "chelsea", 0.85), ("coffee_cup_saucer_mask.png", "coffee", 0.80)]


def best_iou(labels, mask):
    return max(((labels == k) & mask).sum() / ((labels == k) | mask).sum() for k in np.unique(labels))


@pytest.fixture(scope="module")
def lite_engine():
    return Engine.from_pretrained(backbone="efficientnet-lite0", device="cpu")


@pytest.mark.parametrize("mask_file,name,bound", CASES)
def test_lite_backbone_segments_the_main_object(lite_engine, mask_file, name, bound):
    mask = reference_mask(mask_file)
    seg = lite_engine.segment(photo(name))
    assert seg.labels.shape == mask.shape
    assert 2 <= seg.num_segments <= 8
    assert best_iou(seg.labels, mask) > bound


def test_refinement_keeps_the_object(lite_engine):
    # PAMR must not destroy a good segmentation: the refined result stays within 2 points of the unrefined one.
    mask = reference_mask("chelsea_cat_mask.png")
    img = photo("chelsea")
    raw = Engine(lite_engine.config.replace(refine=False), encoder=lite_engine.encoder).segment(img)
    refined = lite_engine.segment(img)
    assert best_iou(refined.labels, mask) > best_iou(raw.labels, mask) - 0.02


def test_readme_example_command(tmp_path):
    from diffcut_engine.cli import main

    out = tmp_path / "out"
    code = main(["segment", os.path.join(ROOT, "examples", "chelsea.jpg"), "-o", str(out),
                 "--backbone", "efficientnet-lite0", "--device", "cpu", "--quiet"])
    assert code == 0
    labels = np.array(Image.open(out / "chelsea_labels.png"))
    assert labels.shape == (300, 451)
    assert best_iou(labels, reference_mask("chelsea_cat_mask.png")) > 0.85
    assert Image.open(out / "chelsea_overlay.png").size == (451, 300)
