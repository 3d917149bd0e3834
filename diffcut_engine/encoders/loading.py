"""Loading a diffusers pipeline for the diffusion encoder, with the cheap checks first.

:func:`resolve_model` checks the model name or folder before anything is loaded; :func:`load_pipeline` reads
``model_index.json``, refuses what is not a text-conditioned SD/SDXL-type pipeline, then loads the VAE in float32 and
only the other components the encoder needs. Every failure is one :class:`~diffcut_engine.errors.ModelLoadError`
line naming the model.
"""

from __future__ import annotations

import logging
import os

from ..errors import InputError, ModelLoadError
from ..utils.imports import require
from ..utils.progress import progress_disabled
from .base import torch

__all__ = ["NEEDED_COMPONENTS", "resolve_model", "load_pipeline", "check_pipeline_index", "looks_like_path",
           "first_line", "check_hub_model", "HUB_TIMEOUT_S"]

logger = logging.getLogger("diffcut_engine")

#: Seconds the one look-up of a hub id (:func:`check_hub_model`) may take before the hub counts as unreachable.
HUB_TIMEOUT_S = 10.0

#: Pipeline components the encoder needs; every other component listed in ``model_index.json`` (safety
#: checker, feature extractor, image encoder) is not loaded at all.
NEEDED_COMPONENTS = ("vae", "unet", "scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")


def looks_like_path(model: str) -> bool:
    """Whether ``model`` names a folder rather than a hub id (``org/name``)."""
    # Anything absolute, relative-dotted, home-based or existing is a folder.
    return (os.path.isabs(model) or model.startswith((".", "~")) or os.path.exists(model)
            or model.count("/") > 1 or "\\" in model)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def resolve_model(model) -> str:
    """The hub id or folder to load for ``model``: official short names resolved, folders checked.

    Raises
    ------
    InputError
        If ``model`` is not a non-empty string.
    ModelLoadError
        If it names a file, or a folder that does not exist.
    """
    from ..config import MODEL_ALIASES

    if not isinstance(model, str) or not model:
        raise InputError(f"model must be a hub id or a folder, got {model!r}")
    model = MODEL_ALIASES.get(model, model)  # "SSD-1B" -> "segmind/SSD-1B", the official short names
    if looks_like_path(model):
        folder = os.path.expanduser(model)
        if os.path.isfile(folder):
            raise ModelLoadError(f"model {model!r} is a file; a diffusers pipeline folder (with "
                                 "model_index.json) is needed, single-file checkpoints are not supported")
        if not os.path.isdir(folder):
            raise ModelLoadError(f"model folder {model!r} does not exist")
        model = folder
    return model


def hub_context(local_files_only: bool) -> str:
    """Where a hub id was looked for, for error messages."""
    try:
        from huggingface_hub import constants
        offline = bool(getattr(constants, "HF_HUB_OFFLINE", False))
    except ImportError:
        offline = False
    if offline or local_files_only:
        return " (offline: only the local Hugging Face cache was searched)"
    return " from the Hugging Face hub"


def check_hub_model(model: str, *, revision=None, local_files_only: bool = False,
                    timeout: float = HUB_TIMEOUT_S) -> bool:
    """Check a hub id cheaply, before diffusers is asked for it; return whether to load it from the cache only.

    Offline (``HF_HUB_OFFLINE=1`` or ``local_files_only``) the id must be in the local cache. Online, one
    ``model_info`` request (``timeout`` seconds) tells an unknown id, a gated repository or a wrong revision
    from an unreachable hub; an unreachable hub falls back to a cached copy. Every failure is one line, so a
    missing model does not take diffusers' retries (half a minute of repeated warnings).

    Raises
    ------
    ModelLoadError
        Naming the model, the cause, and how to use a local folder or the cache.
    """
    try:
        import huggingface_hub as hub
        from huggingface_hub import constants, errors
    except ImportError:  # diffusers needs it; let diffusers report that
        return local_files_only
    folder_hint = "or pass a local diffusers folder with --model PATH (model=PATH)"
    try:
        cached = hub.try_to_load_from_cache(model, "model_index.json", revision=revision)
    except (errors.HFValidationError, ValueError) as exc:
        raise ModelLoadError(f"model {model!r} is neither an existing folder nor a valid Hugging Face hub id "
                             f"(org/name): {first_line(exc)}") from exc
    in_cache = isinstance(cached, str)
    offline = bool(getattr(constants, "HF_HUB_OFFLINE", False))
    if offline or local_files_only:
        if in_cache:
            return True
        why = "HF_HUB_OFFLINE is set" if offline else "--local-files-only (local_files_only=True) is set"
        raise ModelLoadError(f"model {model!r} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) "
                             f"and downloads are off ({why}); download it once with network access, {folder_hint}")
    try:
        hub.HfApi().model_info(model, revision=revision, timeout=timeout)
    except errors.GatedRepoError as exc:
        if in_cache:
            return False
        raise ModelLoadError(f"model {model!r} is a gated repository: accept its terms on huggingface.co and log "
                             f"in (`hf auth login`), {folder_hint}") from exc
    except errors.RepositoryNotFoundError as exc:
        raise ModelLoadError(f"model {model!r} was not found on the Hugging Face hub (unknown id, or a private "
                             f"repository: log in with `hf auth login`); check the spelling, {folder_hint}") from exc
    except errors.RevisionNotFoundError as exc:
        raise ModelLoadError(f"revision {revision!r} of model {model!r} was not found on the Hugging Face "
                             "hub") from exc
    except Exception as exc:  # unreachable hub: connection refused, DNS, timeout, proxy, server error
        if in_cache:
            logger.warning("the Hugging Face hub cannot be reached (%s); using the cached copy of %s",
                           first_line(exc), model)
            return True
        raise ModelLoadError(f"cannot reach the Hugging Face hub to get model {model!r} ({type(exc).__name__}: "
                             f"{first_line(exc)}) and it is not in the local cache ({constants.HF_HUB_CACHE}); "
                             f"connect once to download it, {folder_hint}") from exc
    return local_files_only


def _safetensors_error():
    """safetensors' own error class (a truncated or corrupt .safetensors file), or a stand-in where it has none."""
    try:
        from safetensors import SafetensorError
    except ImportError:  # (a third-party package: an older safetensors without the class)
        return OSError
    return SafetensorError


def check_pipeline_index(model: str, index: dict) -> None:
    """Refuse a model_index.json that is not a text-conditioned SD/SDXL-type pipeline, before any weights."""
    if not isinstance(index, dict):
        raise ModelLoadError(f"{model!r}: its model_index.json holds a {type(index).__name__}, not a table of "
                             "components; the model folder is damaged")

    def cls_of(name):
        spec = index.get(name)
        return spec[1] if isinstance(spec, (list, tuple)) and len(spec) == 2 and spec[1] else None

    kind = index.get("_class_name", "unknown pipeline")
    if cls_of("unet") != "UNet2DConditionModel":
        raise ModelLoadError(f"{model!r} is a {kind} without a UNet2DConditionModel, "
                             "not an SD/SDXL-type pipeline")
    if cls_of("vae") is None:
        raise ModelLoadError(f"{model!r} is a {kind} without a VAE, not an SD/SDXL-type pipeline")
    if cls_of("text_encoder") is None and cls_of("text_encoder_2") is None:
        raise ModelLoadError(f"{model!r} is a {kind} without a text encoder, not an SD/SDXL-type pipeline")
    if cls_of("scheduler") is None:
        raise ModelLoadError(f"{model!r} is a {kind} without a scheduler, not an SD/SDXL-type pipeline")


def dtype_keyword() -> str:
    """``"dtype"`` or ``"torch_dtype"``: the keyword this diffusers release takes in ``from_pretrained``."""
    # diffusers renamed `torch_dtype` to `dtype` (and deprecated the old name) in its 0.3x series; older
    # releases (>= 0.27 is supported) only know `torch_dtype`.
    from diffusers.utils import deprecation_utils
    return "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"


def load_pipeline(model: str, *, dtype, revision=None, local_files_only: bool = False):
    """Load the pipeline components the encoder needs.

    Parameters
    ----------
    model : str
        A hub id or folder, as returned by :func:`resolve_model`.
    dtype : torch.dtype
        Dtype of the UNet and the text encoders.
    revision : str, optional
    local_files_only : bool

    Returns
    -------
    pipe : diffusers.DiffusionPipeline
        With the UNet, scheduler, text encoder(s) and tokenizer(s); unused components are ``None``.
    vae : diffusers.AutoencoderKL
        Loaded in float32 from the checkpoint's own weights (also set as ``pipe.vae``).

    Raises
    ------
    ModelLoadError
        If the model cannot be found or read, or is not an SD/SDXL-type pipeline.
    """
    require("diffusers", "the diffusion encoder")
    require("transformers", "the diffusion encoder's text encoders")
    import diffusers
    from diffusers import DiffusionPipeline

    if not os.path.isdir(model):  # a hub id: fail fast and in one line when it cannot be had
        local_files_only = check_hub_model(model, revision=revision, local_files_only=local_files_only)
    common = dict(revision=revision, local_files_only=local_files_only)
    # 1. Read model_index.json and check that this is a text-conditioned SD/SDXL-type pipeline.
    try:
        index = DiffusionPipeline.load_config(model, **common)
    except (OSError, ValueError) as exc:
        where = "" if os.path.isdir(model) else hub_context(local_files_only)
        raise ModelLoadError(f"could not load diffusers pipeline {model!r}{where}: "
                             f"{first_line(exc)}") from exc
    check_pipeline_index(model, index)

    # 2. The VAE in fp32 from the checkpoint's own weights, then the rest in `dtype`; unused components
    #    (safety checker, feature extractor, image encoder) are passed as None so they are not loaded.
    skipped = {name: None for name, spec in index.items()
               if not name.startswith("_") and isinstance(spec, (list, tuple))
               and name not in NEEDED_COMPONENTS}
    if "requires_safety_checker" in index:
        skipped["requires_safety_checker"] = False
    # --quiet (DIFFCUT_NO_PROGRESS): no "Loading pipeline components" bar either; diffusers has no variable for
    # it, and is imported only here (so the command line's quiet mode, entered before, cannot reach it)
    bars = diffusers.utils.logging
    silence = progress_disabled() and bars.is_progress_bar_enabled()
    if silence:
        bars.disable_progress_bar()
    try:
        vae_cls = getattr(diffusers, index["vae"][1])
        dtype_kw = dtype_keyword()
        vae = vae_cls.from_pretrained(model, subfolder="vae", **{dtype_kw: torch.float32}, **common)
        pipe = DiffusionPipeline.from_pretrained(model, **{dtype_kw: dtype}, vae=vae, **skipped, **common)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ImportError, RuntimeError,
            _safetensors_error()) as exc:  # (RuntimeError: weights that do not fit the config's shapes)
        raise ModelLoadError(f"could not load diffusers pipeline {model!r}: {first_line(exc)}") from exc
    finally:
        if silence:
            bars.enable_progress_bar()
    return pipe, vae
