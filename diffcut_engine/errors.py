"""Exception hierarchy.

Every error the engine raises on purpose derives from :class:`DiffCutError`. The subclasses also derive from the
closest built-in exception, so ``except ValueError`` or ``except ImportError`` in caller code keeps working.
The command line turns a :class:`DiffCutError` into a one-line ``error: ...`` message and exit code 2.
"""

from __future__ import annotations


class DiffCutError(Exception):
    """Base class of all errors raised by diffcut-engine."""


class InputError(DiffCutError, ValueError):
    """An input (image, array, parameter value) is missing, unreadable or has the wrong shape or values."""


class ModelLoadError(DiffCutError, OSError):
    """A model could not be found, downloaded or loaded, or is not of a supported type."""


class BackendUnavailableError(DiffCutError, ImportError):
    """An optional dependency needed by the requested backend is not installed (the message names the extra)."""


class ExportError(DiffCutError, RuntimeError):
    """Exporting a model to another runtime (ONNX, TensorRT) failed."""


class BatchError(DiffCutError):
    """Some items of a batch failed; ``results`` keeps what was finished (``None`` where an item failed).

    Attributes
    ----------
    results : list
        One entry per input, the finished result or ``None``.
    errors : dict[int, DiffCutError]
        The error of each failed input, by index.
    """

    def __init__(self, message: str, results: list, errors: dict):
        super().__init__(message)
        self.results = results
        self.errors = errors


__all__ = [
    "DiffCutError",
    "InputError",
    "ModelLoadError",
    "BackendUnavailableError",
    "ExportError",
    "BatchError",
]
