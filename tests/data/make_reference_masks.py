"""Write the hand-made reference masks used by the real-image segmentation checks.

The masks are pseudo-ground-truth that owes nothing to this engine: each is a polygon whose vertices were
placed by hand on the scikit-image photo (read off a 2x enlargement with a 25 px grid) and then checked by eye
on an overlay (``--overlay DIR`` writes those overlays). They are coarse, a few pixels off along the edges,
which is far finer than the 32 px feature grid they are compared with.

Masks (binary PNG, 0 = background, 255 = object, at the photo's own size):

``chelsea_cat_mask.png``
    ``skimage.data.chelsea()`` (300 x 451): the cat (head, ears, cheeks, whiskered muzzle, chest fur) against
    the blurred room behind it: the light patch at the top-left and the brown/grey area on the right.
``coffee_cup_saucer_mask.png``
    ``skimage.data.coffee()`` (400 x 600): the espresso cup together with its saucer and spoon against the
    wooden table (the saucer's shadow on the table is background).
``astronaut_person_mask.png``
    ``skimage.data.astronaut()`` (512 x 512): the person (hair, face, neck ring and orange suit, gloves at the
    bottom) against the flag, the grey backdrop, the shuttle model, the black stand and the helmet she holds
    (the helmet is background).
``camera_person_mask.png``
    ``skimage.data.camera()`` (512 x 512, grey, used as RGB): the cameraman (hair, face, dark coat, gloves,
    legs) against sky, buildings and grass; the camera and the tripod are background.
``motorcycle_mask.png``
    ``skimage.data.stereo_motorcycle()[0]`` (500 x 741, the left view): the motorcycle (both wheels, seat,
    tank, engine, exhaust, fork, headlight, handlebar) against the garage; thin parts (mirror stems,
    kickstand) are left out, and the polygon runs straight across the spokes and the gap between engine and
    front wheel.

Run ``python tests/data/make_reference_masks.py`` from the repository root to rewrite them (needs scikit-image
and Pillow); ``--overlay /tmp/masks`` also writes ``<name>_overlay.png`` files for a visual check.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))

#: name -> (scikit-image loader, polygon vertices (x, y) in pixels of the photo, in order around the outline).
POLYGONS = {
    "chelsea_cat_mask.png": ("chelsea", [
        (30, 0), (400, 0), (380, 50), (360, 70), (360, 100), (362, 150), (350, 185), (340, 210), (330, 240),
        (325, 270), (320, 300), (0, 300), (0, 115), (15, 100), (30, 75), (35, 40), (30, 15),
    ]),
    "coffee_cup_saucer_mask.png": ("coffee", [
        (76, 210), (82.5, 165), (100, 130), (130, 100), (175, 75), (185, 50), (210, 30), (250, 19),
        (300, 17.5), (350, 25), (385, 45), (400, 70), (415, 67.5), (424, 75), (420, 105), (440, 130),
        (460, 160), (475, 195), (479, 225), (472.5, 260), (455, 295), (430, 325), (395, 355), (350, 377.5),
        (300, 390), (260, 390), (215, 380), (175, 360), (135, 330), (105, 295), (85, 255),
    ]),
    "astronaut_person_mask.png": ("astronaut", [
        (165, 45), (190, 22.5), (225, 15), (265, 25), (290, 50), (300, 80), (297.5, 110), (280, 125),
        (274, 132.5), (272.5, 160), (285, 172.5), (297.5, 195), (304, 220), (306, 237.5), (330, 250),
        (350, 270), (357.5, 300), (362.5, 345), (350, 347.5), (320, 365), (295, 400), (280, 440),
        (277.5, 480), (280, 512), (20, 512), (20, 450), (22.5, 390), (27.5, 340), (37.5, 300), (50, 265),
        (70, 240), (100, 225), (120, 210), (115, 185), (130, 160), (150, 150), (175, 150), (180, 125),
        (165, 100), (155, 80), (155, 60),
    ]),
    "camera_person_mask.png": ("camera", [
        (165, 85), (190, 67.5), (220, 65), (250, 80), (267.5, 100), (270, 120), (260, 135), (252.5, 145),
        (250, 165), (245, 180), (240, 192.5), (265, 210), (280, 200), (300, 195), (320, 170), (330, 175),
        (330, 200), (320, 220), (305, 230), (300, 245), (302.5, 275), (285, 290), (260, 305), (240, 311),
        (220, 306), (205, 302.5), (180, 327.5), (157.5, 360), (149, 385), (149, 512), (0, 512), (0, 257.5),
        (7.5, 245), (22.5, 225), (40, 200), (75, 152.5), (115, 131), (135, 120), (152.5, 109), (159, 100),
    ]),
    "motorcycle_mask.png": ("stereo_motorcycle", [
        (92, 198), (135, 192), (138, 150), (150, 162), (175, 156), (225, 166), (275, 183), (325, 188),
        (350, 175), (370, 163), (400, 150), (430, 135), (465, 115), (480, 100), (510, 95), (540, 110),
        (562, 118), (582, 125), (580, 140), (562, 150), (560, 180), (555, 190), (545, 210), (575, 260),
        (600, 280), (640, 295), (640, 310), (670, 340), (685, 380), (680, 420), (660, 445), (635, 452),
        (600, 440), (570, 420), (545, 395), (525, 360), (512, 325), (480, 330), (470, 360), (440, 372),
        (400, 378), (350, 375), (300, 355), (260, 375), (230, 395), (190, 400), (145, 382), (122, 340),
        (121, 300), (130, 265), (145, 250), (107, 245), (100, 220),
    ]),
}


def polygon_mask(shape, vertices) -> np.ndarray:
    """Boolean (H, W) mask of the pixels inside a polygon given as (x, y) vertices."""
    from skimage.draw import polygon

    xy = np.asarray(vertices, dtype=float)
    rows, cols = polygon(xy[:, 1], xy[:, 0], shape)
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


def photo(name: str) -> np.ndarray:
    """The scikit-image photo, (H, W, 3) uint8 (grey photos repeated over RGB; left view of a stereo pair)."""
    from skimage import data

    image = getattr(data, name)()
    if isinstance(image, tuple):
        image = image[0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return image


def reference_mask(filename: str) -> np.ndarray:
    """Rebuild one mask from its polygon, (H, W) bool."""
    loader, vertices = POLYGONS[filename]
    return polygon_mask(photo(loader).shape[:2], vertices)


def write_overlay(image: np.ndarray, mask: np.ndarray, path: str) -> None:
    """Darken the background, draw the outline in red, at twice the size."""
    from skimage.segmentation import find_boundaries

    big = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1).astype(float)
    big_mask = np.repeat(np.repeat(mask, 2, axis=0), 2, axis=1)
    big[~big_mask] *= 0.45
    big[find_boundaries(big_mask)] = (255, 0, 0)
    Image.fromarray(big.astype(np.uint8)).save(path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=HERE, help="folder for the masks (default: this folder)")
    parser.add_argument("--overlay", default=None, help="also write <name>_overlay.png files to this folder")
    args = parser.parse_args(argv)
    for filename, (loader, _) in POLYGONS.items():
        mask = reference_mask(filename)
        path = os.path.join(args.out, filename)
        Image.fromarray(mask.astype(np.uint8) * 255).convert("1").save(path, optimize=True)
        print(f"{path}: {mask.shape[1]}x{mask.shape[0]}, object {mask.mean():.1%}, "
              f"{os.path.getsize(path)} bytes")
        if args.overlay:
            os.makedirs(args.overlay, exist_ok=True)
            overlay = os.path.join(args.overlay, filename.replace(".png", "_overlay.png"))
            write_overlay(photo(loader), mask, overlay)


if __name__ == "__main__":
    main()
