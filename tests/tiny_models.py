"""Tiny random-weight diffusers pipelines, built offline and saved with ``save_pretrained``.

The layouts mirror the real checkpoints the engine supports, only with a handful of channels:

- :func:`make_tiny_sdxl` follows SSD-1B / SDXL: down blocks ``DownBlock2D, CrossAttnDownBlock2D x2`` (the last
  one without a downsampler), two CLIP text encoders whose hidden states are concatenated, pooled text
  embeddings from the second one, ``addition_embed_type="text_time"``, linear projections, and an Euler
  scheduler (what SSD-1B ships, so the tests can check the encoder swaps it for DDIM).
- :func:`make_tiny_sd` follows SD 1.x: four down blocks, the first three with cross-attention, one CLIP text
  encoder and a PNDM scheduler.

Weights come from ``torch.manual_seed``, so every call writes the same pipeline. The tokenizers are real
``CLIPTokenizer`` objects read from a small byte-level ``vocab.json`` / ``merges.txt`` written here, so
nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import tempfile

import torch

#: The betas of SD 1.x, SDXL and SSD-1B ("scaled_linear", 0.00085 -> 0.012 over 1000 steps).
SCHEDULER_KWARGS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                        beta_schedule="scaled_linear")

#: Pixel size of one feature token for both tiny layouts (VAE /8, then two stride-2 downsamplers).
STRIDE = 32


def _bytes_to_unicode() -> dict:
    # The byte -> printable character table of GPT-2/CLIP byte-level BPE, so every input byte has a token.
    bs = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def make_tiny_tokenizer(pad_token: str = "<|endoftext|>", model_max_length: int = 77):
    """A real ``CLIPTokenizer`` over a byte-level vocabulary of ~530 tokens (ids below 1000).

    The special tokens come last, so ``<|endoftext|>`` has the largest id, which also keeps the legacy
    "argmax of input ids" pooling of CLIP consistent with the eos-token pooling.
    """
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    merges = ["t h", "th e</w>", "a n", "i n", "o n</w>"]
    for merge in merges:
        merged = merge.replace(" ", "")
        if merged not in tokens:
            tokens.append(merged)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(vocab, f)
        with open(os.path.join(tmp, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
        tokenizer = CLIPTokenizer.from_pretrained(tmp, pad_token=pad_token, model_max_length=model_max_length)
    return tokenizer


def _text_config(tokenizer, hidden_size: int, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=1000,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def _tiny_vae(scaling_factor: float):
    from diffusers import AutoencoderKL

    # Four encoder blocks -> three stride-2 downsamplers -> 8x, like the SD/SDXL VAEs.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=4,
        sample_size=64,
        scaling_factor=scaling_factor,
    )


def make_tiny_sdxl(path) -> str:
    """Build a tiny SDXL-type pipeline (SSD-1B layout) and save it to ``path``.

    The hooked module is ``down_blocks.2.attentions.1.transformer_blocks.2.attn1``: the last down block has
    ``layers_per_block=2`` attentions of 3 transformer blocks each, so every index of the path is non-trivial.

    Returns
    -------
    str
        ``path``, as a string.
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    tokenizer = make_tiny_tokenizer()
    tokenizer_2 = make_tiny_tokenizer(pad_token="!")  # SDXL's second tokenizer pads with "!" (id 0)
    text_encoder = CLIPTextModel(_text_config(tokenizer, 32))
    # Different hidden size from the first encoder so the concatenation (32 + 48 = 80) is visible in shapes.
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer_2, 48, projection_dim=40))
    addition_time_embed_dim = 8
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 3),
        attention_head_dim=(2, 4, 4),
        cross_attention_dim=32 + 48,
        norm_num_groups=32,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=addition_time_embed_dim,
        # 6 time ids (H, W, top, left, H, W), each embedded to addition_time_embed_dim, + the pooled embeds.
        projection_class_embeddings_input_dim=6 * addition_time_embed_dim + 40,
    )
    vae = _tiny_vae(scaling_factor=0.13025)
    scheduler = EulerDiscreteScheduler(**SCHEDULER_KWARGS, steps_offset=1, timestep_spacing="leading",
                                       prediction_type="epsilon")
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, add_watermarker=False,
    )
    pipe.save_pretrained(str(path))
    return str(path)


def make_tiny_sd(path) -> str:
    """Build a tiny SD 1.x-type pipeline and save it to ``path``.

    Down blocks ``CrossAttnDownBlock2D x3, DownBlock2D`` as in SD 1.4, so the last down block *with
    attentions* is ``down_blocks[-2]``, at latent / 4 = image / 32, and the hooked module is
    ``down_blocks.2.attentions.1.transformer_blocks.0.attn1``.

    Returns
    -------
    str
        ``path``, as a string.
    """
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    tokenizer = make_tiny_tokenizer()
    text_encoder = CLIPTextModel(_text_config(tokenizer, 32))
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        attention_head_dim=8,
        cross_attention_dim=32,
        norm_num_groups=32,
    )
    vae = _tiny_vae(scaling_factor=0.18215)
    scheduler = PNDMScheduler(**SCHEDULER_KWARGS, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(str(path))
    return str(path)


__all__ = ["make_tiny_sdxl", "make_tiny_sd", "make_tiny_tokenizer", "SCHEDULER_KWARGS", "STRIDE"]


def random_pixels(batch: int = 2, height: int = 64, width: int = 96, seed: int = 0) -> torch.Tensor:
    """(batch, 3, height, width) seeded uniform pixels in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height, width, generator=g) * 2 - 1
