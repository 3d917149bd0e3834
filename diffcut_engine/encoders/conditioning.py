"""The empty-prompt conditioning of the diffusion encoder, computed once and cached.

DiffCut conditions the UNet on the empty prompt ``""`` without classifier-free guidance. :func:`encode_empty_prompt`
runs the pipeline's own ``encode_prompt`` once (the text encoders can then be released);
:class:`EmptyPromptConditioning` holds the embeddings and hands out, per batch, the UNet's conditioning inputs,
with SDXL's size conditioning (``time_ids``) cached per image size (docs/ALGORITHM.md, "Features").
"""

from __future__ import annotations

from typing import Dict, Tuple

from ..errors import ModelLoadError
from .base import torch

__all__ = ["encode_empty_prompt", "EmptyPromptConditioning"]


def encode_empty_prompt(pipe, device):
    """Embeddings of the empty prompt from the pipeline's own ``encode_prompt`` (no classifier-free guidance).

    The text encoders are moved to ``device`` for the call.

    Returns
    -------
    prompt_embeds : torch.Tensor
        (1, 77, D).
    pooled_prompt_embeds : torch.Tensor or None
        (1, P) for SDXL-type pipelines (two text encoders), else ``None``.
    """
    for name in ("text_encoder", "text_encoder_2"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.to(device)
    with torch.no_grad():
        out = pipe.encode_prompt(prompt="", device=device, num_images_per_prompt=1,
                                 do_classifier_free_guidance=False)
    return out[0], (out[2] if len(out) == 4 else None)


class EmptyPromptConditioning:
    """Cached empty-prompt conditioning of one UNet.

    Parameters
    ----------
    unet : diffusers.UNet2DConditionModel
        The UNet it conditions; SDXL-type (``addition_embed_type == "text_time"``) or SD 1.x/2.x.
    prompt_embeds : torch.Tensor
        (1, 77, D) embeddings of the empty prompt.
    pooled_prompt_embeds : torch.Tensor, optional
        (1, P) pooled embeddings; required for SDXL-type UNets.
    device : torch.device
    dtype : torch.dtype
        The UNet's compute dtype; the embeddings are kept in it.
    model : str
        For error messages.

    Raises
    ------
    ModelLoadError
        If an SDXL-type UNet gets no pooled embeddings, or their length does not match the UNet's added embedding.
    """

    def __init__(self, unet, prompt_embeds, pooled_prompt_embeds=None, *, device, dtype, model: str = ""):
        self.device = device
        self.sdxl = unet.config.addition_embed_type == "text_time"
        self.prompt_embeds = prompt_embeds.to(device=device, dtype=dtype)
        self.pooled_prompt_embeds = None
        if self.sdxl:
            if pooled_prompt_embeds is None:
                raise ModelLoadError(f"{model or 'the model'}: an SDXL-type UNet (addition_embed_type="
                                     "'text_time') needs pooled text embeddings, i.e. a pipeline with "
                                     "text_encoder_2")
            self.pooled_prompt_embeds = pooled_prompt_embeds.to(device=device, dtype=dtype)
            # The consistency check of StableDiffusionXLPipeline._get_add_time_ids, once, at load time.
            expected = unet.add_embedding.linear_1.in_features
            passed = 6 * unet.config.addition_time_embed_dim + self.pooled_prompt_embeds.shape[-1]
            if expected != passed:
                raise ModelLoadError(f"{model or 'the model'}: the UNet expects an added embedding of "
                                     f"length {expected} but the text encoder gives {passed}; the "
                                     "checkpoint is inconsistent")
        self._time_ids: Dict[Tuple[int, int], "torch.Tensor"] = {}

    def __call__(self, height: int, width: int, batch_size: int):
        """Conditioning for a batch of ``batch_size`` images of ``height`` x ``width`` px.

        Returns
        -------
        encoder_hidden_states : torch.Tensor
            (B, 77, D) prompt embeddings (an expanded view of the cached (1, 77, D) tensor).
        added_cond_kwargs : dict or None
            SDXL-type models: ``{"text_embeds": (B, P), "time_ids": (B, 6)}`` with time ids
            ``[height, width, 0, 0, height, width]`` (original size, crop top-left, target size, as
            ``StableDiffusionXLPipeline._get_add_time_ids``); ``None`` for SD 1.x/2.x.
        """
        hidden = self.prompt_embeds.expand(batch_size, -1, -1)
        if not self.sdxl:
            return hidden, None
        key = (int(height), int(width))
        time_ids = self._time_ids.get(key)
        if time_ids is None:
            time_ids = torch.tensor([[key[0], key[1], 0, 0, key[0], key[1]]], dtype=self.prompt_embeds.dtype,
                                    device=self.device)
            self._time_ids[key] = time_ids
        return hidden, {"text_embeds": self.pooled_prompt_embeds.expand(batch_size, -1),
                        "time_ids": time_ids.expand(batch_size, -1)}
