"""The open-vocabulary options of ``diffcut segment`` (``--classes``, ``--classes-file``, ``--clip-model``) and the
``<name>_classes.png`` writer."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError

__all__ = ["add_class_arguments", "vocabulary_from_args", "write_class_map"]


def add_class_arguments(parser) -> None:
    """``--classes``, ``--classes-file`` and ``--clip-model``."""
    g = parser.add_argument_group("open-vocabulary names (CLIP)")
    g.add_argument("--classes", default=None, metavar="A,B,...",
                   help="name each segment with CLIP among these classes (comma-separated; synonyms of one class "
                   "joined by |, e.g. 'person|people,sky|clouds,dog'); writes <name>_classes.png and the names "
                   "and scores in summary.json")
    g.add_argument("--classes-file", default=None, metavar="FILE",
                   help="the classes from a file: one class per line, synonyms separated by commas")
    g.add_argument("--clip-model", default=None, metavar="MODEL",
                   help="CLIP that names the segments: open_clip (hf-hub:ORG/REPO, open_clip:ARCH/TAG, or a folder "
                   "with open_clip_config.json; extra [openvocab]) or transformers CLIP (another hub id or a folder "
                   "with config.json); default: the official open_clip ConvNeXt-Large")


def vocabulary_from_args(args):
    """The :class:`~diffcut_engine.openvocab.Vocabulary` of ``--classes`` / ``--classes-file``, or ``None``."""
    from ..openvocab.vocabulary import Vocabulary

    if args.classes is not None and args.classes_file is not None:
        raise InputError("give either --classes or --classes-file, not both")
    if args.classes is not None:
        return Vocabulary.parse(args.classes)
    if args.classes_file is not None:
        return Vocabulary.from_file(args.classes_file)
    if args.clip_model is not None:
        raise InputError("--clip-model names segments only with --classes or --classes-file")
    return None


def write_class_map(seg, image_view, outdir: Path, stem: str) -> Path:
    """Write ``<stem>_classes.png``: the class map over the image, with a legend of the classes present."""
    import numpy as np
    from PIL import Image

    from ..openvocab.render import render_class_map

    naming = seg.naming
    rgb = (image_view.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    if rgb.shape[:2] != naming.class_map.shape:
        rgb = np.asarray(Image.fromarray(rgb).resize(naming.class_map.shape[::-1], Image.BILINEAR))
    path = outdir / f"{stem}_classes.png"
    Image.fromarray(render_class_map(naming.class_map, naming.vocabulary.names, image=rgb)).save(path)
    return path
