"""``benchmarks/ssd1b_config.py`` describes SSD-1B's widths; checked on the meta device (no weights allocated)."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))

from ssd1b_config import POOLED_DIM, SDXL_VAE, SSD1B_UNET, TEXT_HIDDEN, _fill_random, check_widths  # noqa: E402

from diffcut_engine.encoders.diffusion import find_hooked_attention  # noqa: E402

diffusers = pytest.importorskip("diffusers")


def test_unet_widths_on_meta_device():
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**SSD1B_UNET)
    assert unet.conv_in.weight.is_meta
    assert unet.config.block_out_channels == (320, 640, 1280)
    # SSD-1B: no attention in the first down block, 2 then 4 transformer blocks per attention in the next two.
    assert [[len(a.transformer_blocks) for a in (getattr(b, "attentions", None) or [])] for b in unet.down_blocks] \
        == [[], [2, 2], [4, 4]]
    assert find_hooked_attention(unet) == (2, "down_blocks.2.attentions.1.transformer_blocks.3.attn1")
    hooked = unet.get_submodule("down_blocks.2.attentions.1.transformer_blocks.3")
    assert hooked.attn1.to_out[0].out_features == 1280
    # What the text encoders must give: 768 + 1280 hidden widths, 1280 pooled (+ 6 time ids x 256).
    assert hooked.attn2.to_k.in_features == sum(TEXT_HIDDEN) == 2048
    assert unet.add_embedding.linear_1.in_features == 6 * 256 + POOLED_DIM == 2816
    assert 1.3e9 < sum(p.numel() for p in unet.parameters()) < 1.4e9
    check_widths()
    with pytest.raises(ValueError, match="cross_attention_dim"):
        check_widths(dict(SSD1B_UNET, cross_attention_dim=2304))


def test_vae_widths_on_meta_device():
    with torch.device("meta"):
        vae = diffusers.AutoencoderKL(**SDXL_VAE)
    assert vae.config.block_out_channels == (128, 256, 512, 512) and vae.config.latent_channels == 4
    assert vae.config.scaling_factor == 0.13025
    assert len([b for b in vae.encoder.down_blocks if b.downsamplers]) == 3  # 8x


def test_fill_random_is_seeded():
    def build(seed):
        with torch.device("meta"):
            m = torch.nn.ModuleDict({"proj": torch.nn.Linear(8, 4), "norm": torch.nn.LayerNorm(4)})
        return _fill_random(m.to_empty(device="cpu"), seed)

    a, b, c = build(0), build(0), build(1)
    assert torch.equal(a.proj.weight, b.proj.weight) and not torch.equal(a.proj.weight, c.proj.weight)
    assert 0 < float(a.proj.weight.detach().abs().max()) <= 8 ** -0.5
    assert torch.all(a.proj.bias == 0) and torch.all(a.norm.weight == 1) and torch.all(a.norm.bias == 0)
