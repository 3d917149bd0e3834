"""Class vocabularies for open-vocabulary naming: class names with synonyms, and the 14 ViLD prompt templates.

Torch-free. The official code (``tools/clip_classifier.py``, adapted from FC-CLIP) writes each class as a
comma-separated list of synonyms (``"person,child,girl,..."``; ``", "`` counts as ``","``), builds one prompt per
synonym and template, and takes the max over a class's synonyms after averaging each synonym over the templates.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, List, Sequence, Tuple, Union

from ..errors import InputError

__all__ = ["VILD_TEMPLATES", "Vocabulary", "split_synonyms"]

#: The 14 ViLD prompt templates of the official code (``VILD_PROMPT``), in its order.
VILD_TEMPLATES: Tuple[str, ...] = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)


def split_synonyms(text: str) -> Tuple[str, ...]:
    """``"sky, clouds"`` -> ``("sky", "clouds")``: the official split (``", "`` -> ``","``, then ``","``).

    Surrounding white space of each synonym is also stripped and empty synonyms are dropped (the official code
    keeps them, which only happens with malformed lists)."""
    parts = tuple(p.strip() for p in text.replace(", ", ",").split(","))
    return tuple(p for p in parts if p)


@dataclass(frozen=True)
class Vocabulary:
    """The classes a segment can be named with.

    Attributes
    ----------
    classes : tuple of tuple of str
        One tuple of synonyms per class; the first synonym is the class's display name.

    Examples
    --------
    >>> v = Vocabulary.from_names(["person", "sky, clouds", ("dog", "puppy")])
    >>> v.names
    ('person', 'sky', 'dog')
    >>> v.synonym_counts
    (1, 2, 2)
    """

    classes: Tuple[Tuple[str, ...], ...]

    def __post_init__(self):
        classes = tuple(tuple(c) for c in self.classes)
        if not classes:
            raise InputError("a vocabulary needs at least one class")
        for i, syn in enumerate(classes):
            if not syn or not all(isinstance(s, str) and s.strip() for s in syn):
                raise InputError(f"class {i} of the vocabulary has an empty name: {syn!r}")
        object.__setattr__(self, "classes", classes)

    # ---------------------------------------------------------------------------------------------- builders
    @classmethod
    def from_names(cls, names: Iterable[Union[str, Sequence[str]]]) -> "Vocabulary":
        """From class names: a string is split into synonyms at commas (``"sky, clouds"``), a sequence of strings
        is taken as the synonyms of one class."""
        if isinstance(names, str):
            raise InputError("classes must be a list of class names (or a Vocabulary), not one string; "
                             "use Vocabulary.parse('a,b,c') for a comma-separated string")
        out = []
        for item in names:
            if isinstance(item, str):
                out.append(split_synonyms(item))
            elif isinstance(item, (list, tuple)) and all(isinstance(s, str) for s in item):
                out.append(tuple(s.strip() for s in item if s.strip()))
            else:
                raise InputError(f"a class must be a name or a list of synonyms, got {item!r}")
        return cls(tuple(out))

    @classmethod
    def parse(cls, text: str) -> "Vocabulary":
        """From one command-line string: classes separated by commas, synonyms of a class by ``|``
        (``"person|people,sky|clouds,dog"``)."""
        classes = [tuple(s.strip() for s in part.split("|") if s.strip()) for part in text.split(",")]
        classes = [c for c in classes if c]
        if not classes:
            raise InputError(f"no class names in {text!r}")
        return cls(tuple(classes))

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike]) -> "Vocabulary":
        """From a text file: one class per line, synonyms separated by commas (the official class-list format);
        an ``id:`` prefix (as in FC-CLIP's ``*_with_prompt_eng.txt``) is dropped, and empty lines, lines starting
        with ``#`` and ``invalid_class_id`` entries are skipped."""
        try:
            with open(path, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except OSError as exc:
            raise InputError(f"cannot read the class file {os.fspath(path)!r}: {exc.strerror or exc}") from None
        classes: List[Tuple[str, ...]] = []
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            head, sep, rest = line.partition(":")
            if sep and head.strip().isdigit():
                line = rest
            if line.strip() == "invalid_class_id":
                continue
            syn = split_synonyms(line)
            if syn:
                classes.append(syn)
        if not classes:
            raise InputError(f"the class file {os.fspath(path)!r} lists no classes")
        return cls(tuple(classes))

    @classmethod
    def coerce(cls, classes) -> "Vocabulary":
        """A :class:`Vocabulary` from a vocabulary, or a list of names (:meth:`from_names`)."""
        if isinstance(classes, Vocabulary):
            return classes
        return cls.from_names(classes)

    # ------------------------------------------------------------------------------------------------ views
    @property
    def names(self) -> Tuple[str, ...]:
        """Display name of each class (its first synonym)."""
        return tuple(c[0] for c in self.classes)

    @property
    def synonym_counts(self) -> Tuple[int, ...]:
        """Number of synonyms of each class (the official ``num_templates``)."""
        return tuple(len(c) for c in self.classes)

    def prompts(self, templates: Sequence[str] = VILD_TEMPLATES) -> List[str]:
        """Every prompt, class by class, synonym by synonym, template by template (the official order)."""
        return [t.format(s) for syn in self.classes for s in syn for t in templates]

    def __len__(self) -> int:
        return len(self.classes)
