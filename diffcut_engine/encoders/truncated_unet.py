"""Model surgery: the part of a diffusers UNet that DiffCut needs, from the input to the hooked ``attn1``.

The feature DiffCut reads is the output of the self-attention ``attn1`` of the last transformer block of the last
down block with attentions (docs/ALGORITHM.md, "Features"). The official code runs the whole UNet with a forward
hook; :class:`TruncatedUNet` runs the same modules in the same order and stops there, so the mid block and the up
blocks never run (docs/PERFORMANCE.md, "Truncated UNet").
"""

from __future__ import annotations

from typing import Tuple

from ..errors import ModelLoadError
from .base import torch

__all__ = ["TruncatedUNet", "find_hooked_attention"]


def find_hooked_attention(unet) -> Tuple[int, str]:
    """Locate DiffCut's hooked module in a ``UNet2DConditionModel``.

    It is ``attn1`` of the last transformer block of the last attention module of the last down block that has
    attentions: ``down_blocks[-1]`` for SDXL / SSD-1B (whose last down block has attentions and no
    downsampler), ``down_blocks[-2]`` for SD 1.x/2.x (whose last down block is a plain ``DownBlock2D``).

    Parameters
    ----------
    unet : diffusers.UNet2DConditionModel

    Returns
    -------
    block_index : int
        Index of that down block in ``unet.down_blocks``.
    path : str
        Dotted module path, e.g. ``"down_blocks.2.attentions.1.transformer_blocks.3.attn1"`` for SSD-1B.

    Raises
    ------
    ModelLoadError
        If no down block has attentions (not a text-conditioned UNet).
    """
    with_attn = [i for i, blk in enumerate(unet.down_blocks) if len(getattr(blk, "attentions", None) or [])]
    if not with_attn:
        raise ModelLoadError("the UNet has no down block with attention modules, so it has no DiffCut "
                             "feature layer")
    b = with_attn[-1]
    attentions = unet.down_blocks[b].attentions
    n_tb = len(attentions[-1].transformer_blocks)
    return b, f"down_blocks.{b}.attentions.{len(attentions) - 1}.transformer_blocks.{n_tb - 1}.attn1"


class TruncatedUNet(torch.nn.Module):
    """The part of a ``UNet2DConditionModel`` that DiffCut needs: from the input to the hooked ``attn1``.

    It calls the UNet's own submodules in the order of ``UNet2DConditionModel.forward``: time embedding (plus
    the SDXL ``text_time`` embedding), ``conv_in``, the down blocks before the hooked one, then inside the
    hooked down block its resnet/attention pairs up to the last attention, whose ``Transformer2DModel`` runs
    ``norm``, ``proj_in`` and its transformer blocks up to the last one, of which only ``norm1`` and ``attn1``
    run. Nothing after that (the rest of the block, downsamplers, later down blocks, mid block, up blocks,
    ``conv_out``) is executed. No exceptions or hooks are used, so the module can be traced or exported (ONNX)
    as is.

    Parameters
    ----------
    unet : diffusers.UNet2DConditionModel
        The full UNet; its weights are shared, not copied.

    Raises
    ------
    ModelLoadError
        If the UNet uses a feature this truncated forward does not reproduce (class embeddings, an
        ``encoder_hid_proj``, additional embeddings other than SDXL's ``text_time``, non-LayerNorm transformer
        blocks).
    """

    def __init__(self, unet):
        super().__init__()
        self.unet = unet
        self.block_index, self.hook_path = find_hooked_attention(unet)
        cfg = unet.config
        # Refuse what the truncated forward does not reproduce, instead of silently computing something else.
        problems = []
        if getattr(unet, "class_embedding", None) is not None:
            problems.append("class embeddings")
        if getattr(unet, "encoder_hid_proj", None) is not None:
            problems.append(f"encoder_hid_dim_type={cfg.encoder_hid_dim_type!r}")
        if cfg.addition_embed_type not in (None, "text_time"):
            problems.append(f"addition_embed_type={cfg.addition_embed_type!r}")
        block = unet.down_blocks[self.block_index]
        if len(block.resnets) != len(block.attentions):
            problems.append("a down block with unpaired resnets and attentions")
        transformer = block.attentions[-1]
        if not getattr(transformer, "is_input_continuous", True):
            problems.append("non-continuous transformer input")
        last = transformer.transformer_blocks[-1]
        norm_type = getattr(last, "norm_type", "layer_norm")
        if norm_type != "layer_norm" or getattr(last, "pos_embed", None) is not None:
            problems.append(f"transformer blocks with norm_type={norm_type!r} or positional embeddings")
        if problems:
            raise ModelLoadError("unsupported UNet for the truncated DiffCut encoder: " + ", ".join(problems))

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None):
        """Run the UNet up to the hooked ``attn1`` and return its output as a grid.

        Parameters
        ----------
        sample : torch.Tensor
            (B, 4, h_lat, w_lat) noisy latents, in the UNet's dtype.
        timestep : torch.Tensor
            (B,) int64 raw training timesteps.
        encoder_hidden_states : torch.Tensor
            (B, 77, D) prompt embeddings.
        text_embeds, time_ids : torch.Tensor, optional
            (B, P) pooled text embeddings and (B, 6) size conditioning; required for SDXL-type UNets.

        Returns
        -------
        torch.Tensor
            (B, h, w, C) ``attn1`` output in the UNet's dtype, tokens in row-major order, with
            ``(h, w) = (h_lat, w_lat) / 2**(number of downsamplers before the hooked block)``.
        """
        unet = self.unet
        added_cond_kwargs = {}
        if text_embeds is not None:
            added_cond_kwargs = {"text_embeds": text_embeds, "time_ids": time_ids}

        # 1. Time (+ SDXL size/pooled-text) embedding, exactly as UNet2DConditionModel.forward.
        if unet.config.center_input_sample:
            sample = 2 * sample - 1.0
        t_emb = unet.get_time_embed(sample=sample, timestep=timestep)
        emb = unet.time_embedding(t_emb, None)
        aug_emb = unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states,
                                     added_cond_kwargs=added_cond_kwargs)
        if aug_emb is not None:
            emb = emb + aug_emb
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)

        # 2. conv_in and the down blocks before the hooked one, complete.
        hidden = unet.conv_in(sample)
        for block in unet.down_blocks[: self.block_index]:
            if getattr(block, "has_cross_attention", False):
                hidden, _ = block(hidden_states=hidden, temb=emb, encoder_hidden_states=encoder_hidden_states)
            else:
                hidden, _ = block(hidden_states=hidden, temb=emb)

        # 3. The hooked down block: every resnet/attention pair but the last, then the last resnet.
        block = unet.down_blocks[self.block_index]
        for resnet, attn in zip(block.resnets[:-1], block.attentions[:-1]):
            hidden = resnet(hidden, emb)
            hidden = attn(hidden, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
        hidden = block.resnets[-1](hidden, emb)

        # 4. The last Transformer2DModel (its continuous-input path) up to its last block's attn1.
        transformer = block.attentions[-1]
        batch, _, height, width = hidden.shape
        tokens = transformer.norm(hidden)
        if transformer.use_linear_projection:
            tokens = tokens.permute(0, 2, 3, 1).reshape(batch, height * width, tokens.shape[1])
            tokens = transformer.proj_in(tokens)
        else:
            tokens = transformer.proj_in(tokens)
            tokens = tokens.permute(0, 2, 3, 1).reshape(batch, height * width, tokens.shape[1])
        for tblock in transformer.transformer_blocks[:-1]:
            tokens = tblock(tokens, encoder_hidden_states=encoder_hidden_states)
        last = transformer.transformer_blocks[-1]
        out = last.attn1(last.norm1(tokens),
                         encoder_hidden_states=encoder_hidden_states if last.only_cross_attention else None)
        return out.reshape(batch, height, width, out.shape[-1])
