"""CLIP back ends for naming segments: open_clip (the official ConvNeXt model) and transformers CLIP (ViT).

Both expose the same four operations, which is all the naming needs:

- ``encode_text(prompts)``: (n, D) text embeddings, not normalised;
- ``dense_features(image)``: (1, C, h, w) dense image features of a (3, H, W) image in [0, 1];
- ``embed_pooled(pooled)``: (Q, D) image embeddings of (Q, C) mask-pooled dense features;
- ``logit_scale``: the learned log scale.

open_clip, as the official ``tools/clip_classifier.py`` (FC-CLIP's ``extract_features_convnext`` and
``visual_prediction_forward_convnext``): the dense features are the timm ConvNeXt trunk's ``forward_features``
(stem, stages, ``norm_pre``); a pooled vector goes through ``trunk.head`` (as a 1x1 map) and ``visual.head``. As in
the official evaluation the image is fed in [0, 1] without CLIP's mean/std normalisation (``normalize=False``).

transformers CLIP (a ViT): the dense features are the last layer's patch tokens (the class token dropped), with the
position embeddings interpolated to the input size; a pooled vector goes through ``post_layernorm`` and
``visual_projection``, the path of the class token. The image is normalised with the model's mean and std.

:func:`load_clip` picks the back end from the model string (see its docstring).
"""

from __future__ import annotations

import json
import os
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import BackendUnavailableError, InputError, ModelLoadError

__all__ = ["ClipBackend", "OpenClipBackend", "TransformersClipBackend", "load_clip", "check_clip_backend",
           "DEFAULT_CLIP_MODEL", "OPENVOCAB_INSTALL"]

#: The official model (open_clip ``convnext_large_d_320`` / ``laion2b_s29b_b131k_ft_soup``) on the Hugging Face hub.
DEFAULT_CLIP_MODEL = "hf-hub:laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup"

#: How to install the open_clip back end (open_clip needs torchvision; on a CPU-only machine it must be the CPU
#: build matching torch, or torchvision's C++ operators fail to load).
OPENVOCAB_INSTALL = ("pip install 'diffcut-engine[openvocab]' (on a CPU-only machine first: pip install torchvision "
                     "--index-url https://download.pytorch.org/whl/cpu, the build matching your torch)")

#: CLIP's image normalisation (OpenAI), used where a transformers checkpoint has no preprocessor config.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipBackend:
    """Common interface; see the module docstring."""

    kind = "clip"
    #: The input side must be a multiple of this (the patch size, or the ConvNeXt stride).
    multiple = 32

    def __init__(self, name: str, device, normalize: bool, mean=CLIP_MEAN, std=CLIP_STD):
        self.name, self.device, self.normalize = name, torch.device(device), bool(normalize)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r}, normalize={self.normalize})"

    def prepare(self, image: torch.Tensor, size: Optional[Sequence[int]] = None) -> torch.Tensor:
        """(1, 3, H', W') float32 input from a (3, H, W) [0, 1] image: bilinear resize to ``size`` (rounded to a
        multiple of :attr:`multiple`), then the mean/std normalisation if the back end uses it."""
        if image.ndim != 3 or image.shape[0] != 3:
            raise InputError(f"CLIP needs a (3, H, W) image, got shape {tuple(image.shape)}")
        x = image.float()[None]
        h, w = (int(s) for s in (size if size is not None else x.shape[-2:]))
        m = self.multiple
        h, w = max(m, round(h / m) * m), max(m, round(w / m) * m)
        if (h, w) != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        if self.normalize:
            x = (x - self.mean) / self.std
        return x.to(self.device)

    # The four operations
    def encode_text(self, prompts: List[str]) -> torch.Tensor:
        raise NotImplementedError

    def dense_features(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def logit_scale(self) -> torch.Tensor:
        raise NotImplementedError


class TransformersClipBackend(ClipBackend):
    """transformers ``CLIPModel`` (ViT image tower); mask pooling of the last layer's patch tokens."""

    kind = "transformers"

    def __init__(self, model, tokenizer, name: str, device="cpu", normalize: bool = True, mean=CLIP_MEAN,
                 std=CLIP_STD):
        super().__init__(name, device, normalize, mean, std)
        self.model = model.to(self.device).float().eval()
        self.tokenizer = tokenizer
        self.multiple = int(model.config.vision_config.patch_size)

    @classmethod
    def from_pretrained(cls, model: str, *, device="cpu", normalize: bool = True,
                        local_files_only: bool = False) -> "TransformersClipBackend":
        """Load a transformers CLIP checkpoint (hub id or folder) with ``CLIPModel.from_pretrained`` and its
        tokenizer with ``AutoTokenizer.from_pretrained``."""
        from transformers import AutoTokenizer, CLIPModel

        try:
            net = CLIPModel.from_pretrained(model, local_files_only=local_files_only)
            tok = AutoTokenizer.from_pretrained(model, local_files_only=local_files_only)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load the CLIP model {model!r} with transformers: "
                                 f"{str(exc).splitlines()[0]}") from exc
        mean, std = CLIP_MEAN, CLIP_STD
        proc = os.path.join(model, "preprocessor_config.json")
        if os.path.isfile(proc):
            with open(proc, encoding="utf-8") as fh:
                cfg = json.load(fh)
            mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
        return cls(net, tok, model, device=device, normalize=normalize, mean=mean, std=std)

    def encode_text(self, prompts: List[str]) -> torch.Tensor:
        limit = int(self.model.config.text_config.max_position_embeddings)
        batch = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=limit, return_tensors="pt")
        with torch.no_grad():
            out = self.model.get_text_features(input_ids=batch["input_ids"].to(self.device),
                                               attention_mask=batch["attention_mask"].to(self.device))
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def dense_features(self, pixels: torch.Tensor) -> torch.Tensor:
        p = self.multiple
        gh, gw = pixels.shape[-2] // p, pixels.shape[-1] // p
        with torch.no_grad():
            out = self.model.vision_model(pixel_values=pixels, interpolate_pos_encoding=True)
        tokens = out.last_hidden_state[:, 1:, :]  # drop the class token
        return tokens.reshape(tokens.shape[0], gh, gw, -1).permute(0, 3, 1, 2)

    def embed_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model.visual_projection(self.model.vision_model.post_layernorm(pooled))

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.detach()


def _import_open_clip():
    """open_clip, or a BackendUnavailableError that says exactly what to install."""
    from ..utils.imports import is_available

    if not is_available("open_clip"):
        raise BackendUnavailableError(f"the open_clip CLIP back end needs open_clip_torch; install it with: "
                                      f"{OPENVOCAB_INSTALL}")
    try:
        import open_clip
    except (ImportError, RuntimeError) as exc:  # typically a torchvision built for another torch or for CUDA
        raise BackendUnavailableError(f"open_clip is installed but fails to import ({str(exc).splitlines()[0]}); "
                                      f"install a torchvision that matches torch: {OPENVOCAB_INSTALL}") from exc
    return open_clip


class OpenClipBackend(ClipBackend):
    """open_clip CLIP with a timm ConvNeXt image tower (the official ``convnext_large_d_320``)."""

    kind = "open_clip"

    def __init__(self, model, tokenizer, name: str, device="cpu", normalize: bool = False):
        super().__init__(name, device, normalize)
        visual = getattr(model, "visual", None)
        trunk = getattr(visual, "trunk", None)
        if trunk is None or not hasattr(trunk, "forward_features") or not hasattr(trunk, "head"):
            raise ModelLoadError(f"{name!r}: the open_clip back end needs a timm ConvNeXt image tower "
                                 "(model.visual.trunk), as the official convnext_large_d_320")
        self.model = model.to(self.device).float().eval()
        self.tokenizer = tokenizer
        self.multiple = 32

    @classmethod
    def from_pretrained(cls, model: str, *, device="cpu", normalize: bool = False) -> "OpenClipBackend":
        """Load with ``open_clip.create_model_and_transforms``: ``hf-hub:org/repo``, ``local-dir:/path`` (or a
        folder holding ``open_clip_config.json``), or ``open_clip:ARCH/PRETRAINED_TAG``."""
        open_clip = _import_open_clip()
        name, pretrained = _open_clip_name(model)
        try:
            net, _, _ = open_clip.create_model_and_transforms(name, pretrained=pretrained)
            tok = open_clip.get_tokenizer(name)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ModelLoadError(f"cannot load the CLIP model {model!r} with open_clip: "
                                 f"{str(exc).splitlines()[0]}") from exc
        return cls(net, tok, model, device=device, normalize=normalize)

    def encode_text(self, prompts: List[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(prompts)).to(self.device)
        with torch.no_grad():
            return self.model.encode_text(tokens, normalize=False)

    def dense_features(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model.visual.trunk.forward_features(pixels)  # stem, stages, norm_pre

    def embed_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = self.model.visual.trunk.head(pooled.reshape(pooled.shape[0], pooled.shape[1], 1, 1))
            return self.model.visual.head(x)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.detach()


def _open_clip_name(model: str):
    """(model name for open_clip, pretrained tag or None) of a model string."""
    if model.startswith("open_clip:"):
        arch, _, tag = model[len("open_clip:"):].partition("/")
        if not arch:
            raise InputError(f"expected open_clip:ARCH/PRETRAINED_TAG, got {model!r}")
        return arch, (tag or None)
    if model.startswith(("hf-hub:", "local-dir:")):
        return model, None
    if os.path.isdir(model):
        return "local-dir:" + os.path.abspath(model), None
    raise InputError(f"not an open_clip model: {model!r}")


def clip_kind(model: str) -> str:
    """``"open_clip"`` or ``"transformers"``: which library loads ``model`` (see :func:`load_clip`)."""
    if model.startswith(("open_clip:", "hf-hub:", "local-dir:")):
        return "open_clip"
    if os.path.isdir(model):
        if os.path.isfile(os.path.join(model, "open_clip_config.json")):
            return "open_clip"
        if os.path.isfile(os.path.join(model, "config.json")):
            return "transformers"
        raise ModelLoadError(f"CLIP folder {model!r} has neither open_clip_config.json (open_clip) nor "
                             "config.json (transformers)")
    if os.path.exists(model):
        raise ModelLoadError(f"CLIP model {model!r} is a file; give a folder or a hub id")
    if os.path.isabs(model) or model.startswith((".", "~")) or "\\" in model or model.count("/") > 1:
        # a path, not an org/name hub id (the rule of the diffusion model's loader): say so now
        raise ModelLoadError(f"CLIP folder {model!r} does not exist")
    return "transformers"


def check_clip_backend(model: Optional[str] = None) -> str:
    """The back end kind of ``model`` (default: the official model), raising now if its library is missing, so
    that a command fails before it loads the diffusion model rather than after."""
    kind = clip_kind(model or DEFAULT_CLIP_MODEL)
    if kind == "open_clip":
        _import_open_clip()
    return kind


def load_clip(model: Optional[str] = None, *, device="cpu", normalize: Optional[bool] = None,
              local_files_only: bool = False) -> ClipBackend:
    """Load a CLIP model for naming segments.

    Parameters
    ----------
    model : str, optional
        Default :data:`DEFAULT_CLIP_MODEL` (the official open_clip ConvNeXt-Large). open_clip loads
        ``hf-hub:org/repo``, ``local-dir:/path``, ``open_clip:ARCH/TAG`` (e.g.
        ``open_clip:convnext_large_d_320/laion2b_s29b_b131k_ft_soup``) and folders with ``open_clip_config.json``;
        transformers loads folders with ``config.json`` and any other hub id (e.g. ``openai/clip-vit-base-patch16``).
    device : str or torch.device
    normalize : bool, optional
        Apply CLIP's mean/std to the image. Default: off for open_clip (as the official evaluation, which feeds
        [0, 1] images), on for transformers.
    local_files_only : bool
        transformers: never download.

    Raises
    ------
    BackendUnavailableError
        open_clip requested but not installed (or its torchvision does not match torch); the message says what to
        install.
    ModelLoadError
        The model cannot be found or is not a supported CLIP.
    """
    model = model or DEFAULT_CLIP_MODEL
    if not isinstance(model, str):
        raise InputError(f"clip_model must be a string, got {model!r}")
    if clip_kind(model) == "open_clip":
        return OpenClipBackend.from_pretrained(model, device=device,
                                               normalize=False if normalize is None else normalize)
    return TransformersClipBackend.from_pretrained(model, device=device,
                                                   normalize=True if normalize is None else normalize,
                                                   local_files_only=local_files_only)
