"""SSD-1B's configuration (DIFFCUT.md section 8), for benchmarks without the real weights.

- :func:`build_random_unet`: the SSD-1B UNet (1.3 B parameters) with cheap random weights, as a module.
- :func:`build_random_pipeline`: a whole SSD-1B-sized diffusers pipeline folder (``save_pretrained`` layout), so
  benchmarks can load it through the engine's real ``DiffusionEncoder.from_pretrained``. Nothing is downloaded.

The UNet and the VAE are built on the meta device and then filled (no slow default initialisation). The text
encoders are only used once, for the empty-prompt conditioning, so they are small random CLIP text encoders
(two layers, the tokenizers of ``tests/tiny_models.py``) with the output widths SSD-1B's UNet expects.
"""

from __future__ import annotations

import gc
import os
import sys
import time

SSD1B_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    transformer_layers_per_block=[[1], [2, 2], [4, 4]],
    reverse_transformer_layers_per_block=[[4, 4, 10], [2, 1, 1], 1],
    mid_block_type="UNetMidBlock2D",
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    use_linear_projection=True,
)

#: The SDXL VAE (SSD-1B ships it): 8x downsampling, 4 latent channels, scaling factor 0.13025.
SDXL_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.13025,
    force_upcast=True,
)

#: Hidden-state widths of SSD-1B's two text encoders (CLIP ViT-L, OpenCLIP ViT-bigG), concatenated into the
#: UNet's cross-attention input (768 + 1280 = 2048), and the second one's pooled projection width, which with
#: the six time ids embedded to ``addition_time_embed_dim`` gives ``projection_class_embeddings_input_dim``
#: (1280 + 6 * 256 = 2816).
TEXT_HIDDEN = (768, 1280)
POOLED_DIM = 1280

MODEL_LABEL = "SSD-1B-sized, random weights (benchmarks/ssd1b_config.py)"


def _fill_random(module, seed: int):
    """Fill every parameter in place: uniform(+-1/sqrt(fan_in)) for matrices and kernels, 1 for norm weights,
    0 for biases and buffers. Cheap and deterministic; enough for timing and for a finite forward pass."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim > 1:
                bound = (1.0 / p[0].numel()) ** 0.5
                p.uniform_(-bound, bound, generator=g)
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
        for _, b in module.named_buffers():
            b.zero_()
    return module


def _build_random(cls, config: dict, seed: int):
    """``cls(**config)`` built on the meta device, allocated on the CPU and filled by :func:`_fill_random`."""
    import torch

    with torch.device("meta"):
        model = cls(**config)
    return _fill_random(model.to_empty(device="cpu"), seed).eval()


def build_random_unet(seed: int = 0):
    """SSD-1B-sized UNet with cheap random weights (built on the meta device, then filled uniformly)."""
    from diffusers import UNet2DConditionModel

    return _build_random(UNet2DConditionModel, SSD1B_UNET, seed)


def build_random_vae(seed: int = 0):
    """SDXL-sized ``AutoencoderKL`` with cheap random weights (meta device, then filled)."""
    from diffusers import AutoencoderKL

    return _build_random(AutoencoderKL, SDXL_VAE, seed)


def _tiny_models():
    # The offline tokenizers and text-encoder configs of the tests, shared rather than copied.
    tests = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import tiny_models

    return tiny_models


def build_random_text_encoders(seed: int = 0):
    """Small random CLIP text encoders (2 layers) with SSD-1B's widths, and their offline tokenizers.

    Returns
    -------
    (tokenizer, text_encoder, tokenizer_2, text_encoder_2)
        Hidden widths :data:`TEXT_HIDDEN`; ``text_encoder_2`` projects its pooled output to :data:`POOLED_DIM`.
    """
    import torch
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tm = _tiny_models()
    torch.manual_seed(seed)
    tokenizer = tm.make_tiny_tokenizer()
    tokenizer_2 = tm.make_tiny_tokenizer(pad_token="!")  # as SDXL's second tokenizer
    text_encoder = CLIPTextModel(tm._text_config(tokenizer, TEXT_HIDDEN[0]))
    text_encoder_2 = CLIPTextModelWithProjection(tm._text_config(tokenizer_2, TEXT_HIDDEN[1],
                                                                 projection_dim=POOLED_DIM))
    return tokenizer, text_encoder.eval(), tokenizer_2, text_encoder_2.eval()


def check_widths(unet_config: dict = SSD1B_UNET) -> None:
    """Raise ``ValueError`` if the text-encoder widths do not match what the UNet config expects."""
    if unet_config["cross_attention_dim"] != sum(TEXT_HIDDEN):
        raise ValueError(f"cross_attention_dim {unet_config['cross_attention_dim']} != "
                         f"{' + '.join(map(str, TEXT_HIDDEN))}")
    expected = 6 * unet_config["addition_time_embed_dim"] + POOLED_DIM
    if unet_config["projection_class_embeddings_input_dim"] != expected:
        raise ValueError(f"projection_class_embeddings_input_dim {unet_config['projection_class_embeddings_input_dim']}"
                         f" != 6 * {unet_config['addition_time_embed_dim']} + {POOLED_DIM}")


def build_random_pipeline(folder, seed: int = 0, log=print) -> str:
    """Write an SSD-1B-sized ``StableDiffusionXLPipeline`` with random weights to ``folder`` (``save_pretrained``).

    UNet :data:`SSD1B_UNET`, VAE :data:`SDXL_VAE`, small text encoders of SSD-1B's widths
    (:func:`build_random_text_encoders`) and SSD-1B's Euler scheduler. About 5.3 GB on disk (fp32); the peak
    memory is about one fp32 UNet (~5.2 GB), which is released before returning.

    Parameters
    ----------
    folder : str or os.PathLike
        Output folder (created).
    seed : int
        Weight seed; the same seed writes the same weights.
    log : callable or None
        Called with one progress line per step.

    Returns
    -------
    str
        ``folder``, as a string.
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    say = log or (lambda *_: None)
    check_widths()
    t0 = time.perf_counter()
    unet = build_random_unet(seed)
    n = sum(p.numel() for p in unet.parameters())
    say(f"[ssd1b-random] UNet built: {n / 1e9:.2f} B parameters, {4 * n / 1e9:.1f} GB fp32 "
        f"({time.perf_counter() - t0:.0f} s)")
    vae = build_random_vae(seed + 1)
    tokenizer, text_encoder, tokenizer_2, text_encoder_2 = build_random_text_encoders(seed + 2)
    scheduler = EulerDiscreteScheduler(**_tiny_models().SCHEDULER_KWARGS, steps_offset=1,
                                       timestep_spacing="leading", prediction_type="epsilon")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
                                     add_watermarker=False)
    say(f"[ssd1b-random] VAE and text encoders built ({time.perf_counter() - t0:.0f} s); saving to {folder}")
    pipe.save_pretrained(str(folder))
    del pipe, unet, vae, text_encoder, text_encoder_2
    gc.collect()
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)
    say(f"[ssd1b-random] pipeline saved: {size / 1e9:.2f} GB ({time.perf_counter() - t0:.0f} s)")
    return str(folder)


__all__ = ["SSD1B_UNET", "SDXL_VAE", "TEXT_HIDDEN", "POOLED_DIM", "MODEL_LABEL", "build_random_unet",
           "build_random_vae", "build_random_text_encoders", "build_random_pipeline", "check_widths"]
