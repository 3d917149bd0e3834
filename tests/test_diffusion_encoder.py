"""DiffusionEncoder on tiny random SD/SDXL-type pipelines (tests/tiny_models.py), CPU, offline.

The reference for "what DiffCut computes" is the official extractor (``tools/ldm.py``), re-done here step by
step with plain diffusers calls on the same saved pipeline, independently of the encoder's own code.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from diffcut_engine.encoders.diffusion import DiffusionEncoder
from diffcut_engine.errors import InputError, ModelLoadError
from tiny_models import random_pixels

STRIDE = 32




@pytest.fixture(params=["sdxl", "sd"])
def family(request):
    return request.param


@pytest.fixture
def encoder(family, request):
    return request.getfixturevalue(f"tiny_{family}_encoder")


@pytest.fixture
def model_path(family, request):
    return request.getfixturevalue(f"tiny_{family}_path")


@pytest.fixture(scope="module")
def pipelines(tiny_sdxl_path, tiny_sd_path):
    """The saved pipelines loaded whole by diffusers (float32, CPU), for the independent references."""
    from diffusers import DiffusionPipeline

    return {
        "sdxl": DiffusionPipeline.from_pretrained(tiny_sdxl_path),
        "sd": DiffusionPipeline.from_pretrained(tiny_sd_path),
    }


def _official_features(pipe, pixels, timestep=50, seed=42):
    """DiffCut features the way tools/ldm.py computes them (full UNet + forward hook), on the CPU."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    b, _, height, width = pixels.shape
    with torch.no_grad():
        out = pipe.encode_prompt([""] * b, device="cpu", num_images_per_prompt=1,
                                 do_classifier_free_guidance=False)
        added = None
        if len(out) == 4:
            projection_dim = pipe.text_encoder_2.config.projection_dim
            time_ids = pipe._get_add_time_ids((height, width), (0, 0), (height, width), dtype=out[0].dtype,
                                              text_encoder_projection_dim=projection_dim)
            added = {"text_embeds": out[2], "time_ids": time_ids.repeat(b, 1)}
        latent = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
        rng = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn(1, 4, height // 8, width // 8, generator=rng).expand_as(latent)
        t = torch.tensor([timestep]).expand(b)
        noisy = scheduler.add_noise(latent, noise, t)
        with_attn = [blk for blk in pipe.unet.down_blocks if getattr(blk, "attentions", None)]
        attn1 = with_attn[-1].attentions[-1].transformer_blocks[-1].attn1
        store = {}
        handle = attn1.register_forward_hook(lambda m, i, o: store.__setitem__("f", o))
        try:
            pipe.unet(scheduler.scale_model_input(noisy, t), t, encoder_hidden_states=out[0],
                      added_cond_kwargs=added)
        finally:
            handle.remove()
    feats = store["f"].float().reshape(b, height // STRIDE, width // STRIDE, -1)
    return torch.nn.functional.normalize(feats, dim=-1)


# ------------------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------------------

def test_sdxl_folder_loads_with_family_and_hook_path(tiny_sdxl_encoder, tiny_sdxl_path):
    enc = tiny_sdxl_encoder
    assert enc.family == "sdxl"
    # Last down block (no downsampler, like SSD-1B's down_blocks[2]); 2 attentions of 3 transformer blocks.
    assert enc.hook_path == "down_blocks.2.attentions.1.transformer_blocks.2.attn1"
    assert enc.hooked_module is enc.unet.down_blocks[-1].attentions[-1].transformer_blocks[-1].attn1
    assert enc.stride == 32 and enc.device == torch.device("cpu") and enc.dtype == torch.float32
    assert enc.name == f"{tiny_sdxl_path} (torch, fp32, cpu)"
    info = enc.describe()
    assert info["hook_path"] == enc.hook_path and info["family"] == "sdxl" and info["vae_dtype"] == "fp32"
    assert info["prompt_embeds_shape"] == (1, 77, 32 + 48) and info["pooled_prompt_embeds_shape"] == (1, 40)


def test_sd_folder_loads_with_family_and_hook_path(tiny_sd_encoder):
    enc = tiny_sd_encoder
    assert enc.family == "sd"
    # SD 1.x: the last down block is a plain DownBlock2D, so the hooked one is down_blocks[-2].
    assert not getattr(enc.unet.down_blocks[-1], "attentions", None)
    assert enc.hook_path == "down_blocks.2.attentions.1.transformer_blocks.0.attn1"
    assert enc.hooked_module is enc.unet.down_blocks[-2].attentions[-1].transformer_blocks[-1].attn1
    assert enc.stride == 32
    assert "pooled_prompt_embeds_shape" not in enc.describe()


def test_text_encoders_run_once_and_are_released(tiny_sdxl_path, monkeypatch):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    calls = {"text_encoder": 0, "text_encoder_2": 0}
    # transformers 5 nests a CLIPTextModel inside CLIPTextModelWithProjection: count the outermost calls only.
    depth = [0]
    for cls, key in ((CLIPTextModel, "text_encoder"), (CLIPTextModelWithProjection, "text_encoder_2")):
        original = cls.forward

        def counted(self, *args, _original=original, _key=key, **kwargs):
            calls[_key] += depth[0] == 0
            depth[0] += 1
            try:
                return _original(self, *args, **kwargs)
            finally:
                depth[0] -= 1

        monkeypatch.setattr(cls, "forward", counted)

    enc = DiffusionEncoder.from_pretrained(tiny_sdxl_path, device="cpu")
    enc.encode(random_pixels(2, 64, 64))
    enc.encode(random_pixels(1, 96, 64))
    enc.full_unet_hook_features(random_pixels(1, 64, 64))
    assert calls == {"text_encoder": 1, "text_encoder_2": 1}
    held = [m for m in vars(enc).values() if isinstance(m, (CLIPTextModel, CLIPTextModelWithProjection))]
    assert held == []


# ------------------------------------------------------------------------------------------------------------
# Exactness: official procedure, truncation
# ------------------------------------------------------------------------------------------------------------

def test_features_match_official_procedure(encoder, family, pipelines):
    x = random_pixels(2, 96, 64, seed=1)  # non-square: SDXL time ids and the grid must follow (H, W)
    ours = encoder.encode(x)
    ref = _official_features(pipelines[family], x)
    assert ours.shape == ref.shape == (2, 3, 2, encoder.hooked_module.to_out[0].out_features)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_truncated_unet_equals_full_unet_hook_and_skips_everything_after(encoder):
    unet = encoder.unet
    b_idx = int(encoder.hook_path.split(".")[1])
    hooked_block = unet.down_blocks[b_idx]
    last_tb = hooked_block.attentions[-1].transformer_blocks[-1]
    after = {"mid_block": unet.mid_block, "conv_out": unet.conv_out, "attn2": last_tb.attn2, "ff": last_tb.ff,
             "proj_out": hooked_block.attentions[-1].proj_out}
    after.update({f"up_blocks.{i}": blk for i, blk in enumerate(unet.up_blocks)})
    after.update({f"down_blocks.{i}": unet.down_blocks[i] for i in range(b_idx + 1, len(unet.down_blocks))})
    if hooked_block.downsamplers is not None:
        after["downsamplers"] = hooked_block.downsamplers
    ran = []
    handles = [m.register_forward_hook(lambda m, i, o, name=name: ran.append(name))
               for name, m in after.items()]
    handles.append(encoder.hooked_module.register_forward_hook(lambda m, i, o: ran.append("attn1")))
    try:
        x = random_pixels(2, 64, 96, seed=2)
        truncated = encoder.encode(x)
        assert ran == ["attn1"]
        ran.clear()
        full = encoder.full_unet_hook_features(x)
        # The hooks do fire when the whole UNet runs, so the empty list above is meaningful.
        assert "mid_block" in ran and "up_blocks.0" in ran and "conv_out" in ran and "attn1" in ran
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(truncated, full, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------------------
# Conditioning
# ------------------------------------------------------------------------------------------------------------

def test_conditioning_equals_pipeline_encode_prompt(encoder, family, pipelines):
    pipe = pipelines[family]
    with torch.no_grad():
        out = pipe.encode_prompt("", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
    hidden, added = encoder.conditioning(96, 64, 3)
    assert hidden.shape == (3, 77, out[0].shape[-1])
    torch.testing.assert_close(hidden, out[0].expand(3, -1, -1), atol=0, rtol=0)
    if family == "sd":
        assert added is None and hidden.shape[-1] == 32
        return
    assert hidden.shape[-1] == 32 + 48  # both encoders' penultimate hidden states, concatenated
    torch.testing.assert_close(added["text_embeds"], out[2].expand(3, -1), atol=0, rtol=0)
    ref_ids = pipe._get_add_time_ids((96, 64), (0, 0), (96, 64), dtype=out[0].dtype,
                                     text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    torch.testing.assert_close(added["time_ids"], ref_ids.repeat(3, 1), atol=0, rtol=0)


def test_time_ids_fed_to_unet_follow_pixel_size(tiny_sdxl_encoder):
    enc = tiny_sdxl_encoder
    seen = []
    handle = enc.unet.add_time_proj.register_forward_hook(lambda m, i, o: seen.append(i[0].clone()))
    try:
        enc.encode(random_pixels(2, 96, 64))
        enc.encode(random_pixels(1, 64, 128))
    finally:
        handle.remove()
    assert seen[0].tolist() == [96, 64, 0, 0, 96, 64] * 2
    assert seen[1].tolist() == [64, 128, 0, 0, 64, 128]


# ------------------------------------------------------------------------------------------------------------
# Noise, timestep, scheduler, VAE
# ------------------------------------------------------------------------------------------------------------

def test_scheduler_is_ddim_trailing_not_the_saved_euler(tiny_sdxl_encoder, tiny_sdxl_path):
    from diffusers import DDIMScheduler

    with open(os.path.join(tiny_sdxl_path, "scheduler", "scheduler_config.json")) as f:
        assert json.load(f)["_class_name"] == "EulerDiscreteScheduler"
    sched = tiny_sdxl_encoder.scheduler
    assert type(sched) is DDIMScheduler
    assert sched.config.timestep_spacing == "trailing"
    assert tiny_sdxl_encoder.timestep == 50


def test_noise_is_seeded_cached_and_shared_across_the_batch(tiny_sdxl_encoder):
    enc = tiny_sdxl_encoder
    noise = enc.noise((3, 2))
    expected = torch.randn(1, 4, 3, 2, generator=torch.Generator("cpu").manual_seed(42))
    assert noise.shape == (1, 4, 3, 2) and noise.dtype == torch.float32
    torch.testing.assert_close(noise, expected, atol=0, rtol=0)
    assert enc.noise((3, 2)) is noise  # drawn once per latent size

    x = random_pixels(3, 96, 64)
    z = enc.encode_latents(x)
    noisy = enc.add_noise(z)
    # abar_50 from the scaled-linear betas, computed here from the definition.
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    abar = float(torch.cumprod(1 - betas, 0)[50])
    assert abar == pytest.approx(0.9516, abs=5e-4)
    eps = (noisy.double() - math.sqrt(abar) * z.double()) / math.sqrt(1 - abar)
    big = enc.noise(z.shape[-2:]).double()
    for i in range(3):  # one noise tensor, the seed-42 one, for every image of the batch
        torch.testing.assert_close(eps[i:i + 1], big, atol=1e-5, rtol=1e-5)


def test_vae_uses_posterior_mean_times_own_scaling_factor(encoder, family, model_path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(model_path, subfolder="vae")
    assert vae.config.scaling_factor == {"sdxl": 0.13025, "sd": 0.18215}[family]
    x = random_pixels(2, 64, 96, seed=3)
    z = encoder.encode_latents(x)
    with torch.no_grad():
        posterior = vae.encode(x).latent_dist
    assert z.shape == (2, 4, 8, 12) and z.dtype == torch.float32
    torch.testing.assert_close(z, posterior.mean * vae.config.scaling_factor, atol=1e-6, rtol=1e-6)
    # A sample would differ from the mean (the posterior std is not zero) and from one call to the next.
    assert float(posterior.std.min()) > 0
    torch.testing.assert_close(encoder.encode_latents(x), z, atol=0, rtol=0)


# ------------------------------------------------------------------------------------------------------------
# Output contract, batching, precision
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("height,width", [(64, 64), (96, 64), (64, 128)])
def test_output_shape_dtype_and_unit_norm(encoder, height, width):
    feats = encoder.encode(random_pixels(2, height, width).double())  # any float dtype is accepted
    assert feats.shape == (2, height // 32, width // 32, encoder.hooked_module.to_out[0].out_features)
    assert feats.dtype == torch.float32 and feats.device == encoder.device
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(feats.shape[:-1]), atol=1e-5, rtol=0)


def test_batch_equals_one_by_one(encoder):
    x = random_pixels(3, 64, 96, seed=4)
    batched = encoder.encode(x)
    single = torch.cat([encoder.encode(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batched[0], batched[1])  # different images do give different features


def test_bf16_runs_on_cpu_close_to_fp32_with_fp32_vae(tiny_sdxl_path, tiny_sdxl_encoder):
    enc = DiffusionEncoder.from_pretrained(tiny_sdxl_path, device="cpu", dtype="bf16")
    assert enc.dtype == torch.bfloat16 and enc.unet.dtype == torch.bfloat16 and "bf16" in enc.name
    assert enc.vae.dtype == torch.float32
    x = random_pixels(2, 96, 64, seed=5)
    # The VAE is the same fp32 computation whatever the UNet precision.
    torch.testing.assert_close(enc.encode_latents(x), tiny_sdxl_encoder.encode_latents(x), atol=0, rtol=0)
    low, ref = enc.encode(x), tiny_sdxl_encoder.encode(x)
    assert low.dtype == torch.float32 and low.shape == ref.shape
    cosine = (low * ref).sum(-1)
    assert float(cosine.min()) > 0.995, float(cosine.min())  # measured: 0.9998


# ------------------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------------------

def test_missing_folder_raises_model_load_error_naming_it(tmp_path):
    missing = str(tmp_path / "no_such_model")
    with pytest.raises(ModelLoadError, match="no_such_model") as info:
        DiffusionEncoder.from_pretrained(missing, device="cpu")
    assert "\n" not in str(info.value)


def test_unknown_hub_id_raises_model_load_error_offline():
    with pytest.raises(ModelLoadError, match="no-such-org/no-such-model") as info:
        DiffusionEncoder.from_pretrained("no-such-org/no-such-model", device="cpu")
    assert "\n" not in str(info.value)


def test_folder_without_pipeline_raises_model_load_error(tmp_path):
    (tmp_path / "README.md").write_text("not a model")
    with pytest.raises(ModelLoadError, match=str(tmp_path.name)):
        DiffusionEncoder.from_pretrained(str(tmp_path), device="cpu")


def test_wrong_kind_of_pipeline_raises_model_load_error(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, block_out_channels=(32, 32), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(str(tmp_path / "ddpm"))
    with pytest.raises(ModelLoadError, match="not an SD/SDXL-type pipeline"):
        DiffusionEncoder.from_pretrained(str(tmp_path / "ddpm"), device="cpu")


@pytest.mark.parametrize("bad", [
    torch.zeros(3, 64, 64),            # not 4-D
    torch.zeros(1, 4, 64, 64),         # 4 channels
    torch.zeros(1, 3, 64, 80),         # width not a multiple of 32
    torch.zeros(0, 3, 64, 64),         # empty batch
    torch.zeros(1, 3, 64, 64, dtype=torch.uint8),  # not floating point
])
def test_bad_pixel_shapes_raise_input_error(tiny_sd_encoder, bad):
    with pytest.raises(InputError):
        tiny_sd_encoder.encode(bad)


def test_nan_pixels_raise_input_error(tiny_sd_encoder):
    x = random_pixels(1, 64, 64)
    x[0, 1, 5, 7] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        tiny_sd_encoder.encode(x)
    with pytest.raises(ValueError):  # InputError is a ValueError for callers that catch that
        tiny_sd_encoder.encode_latents(x)


def test_bad_options_raise_input_error(tiny_sd_path):
    with pytest.raises(InputError, match="dtype"):
        DiffusionEncoder.from_pretrained(tiny_sd_path, device="cpu", dtype="fp8")
    with pytest.raises(InputError, match="timestep"):
        DiffusionEncoder.from_pretrained(tiny_sd_path, device="cpu", timestep=1000)


def test_damaged_model_folders_raise_one_line_model_load_errors(tiny_sdxl_path, tmp_path):
    """A truncated text-encoder file (SafetensorError), weights that do not fit the config (RuntimeError), a missing
    tokenizer (OverflowError in encode_prompt) and a model_index.json holding a list (AttributeError) gave raw
    exceptions."""
    import shutil

    def damaged(name, change):
        folder = tmp_path / name
        shutil.copytree(tiny_sdxl_path, folder)
        change(folder)
        return str(folder)

    def truncate(folder):
        path = next((folder / "text_encoder").glob("*.safetensors"))
        path.write_bytes(path.read_bytes()[:1000])

    def mismatch(folder):
        config = json.loads((folder / "vae" / "config.json").read_text())
        config["latent_channels"] = config["latent_channels"] * 2
        (folder / "vae" / "config.json").write_text(json.dumps(config))

    cases = {
        "truncated_text_encoder": truncate,
        "vae_config_mismatch": mismatch,
        "no_tokenizer": lambda folder: shutil.rmtree(folder / "tokenizer"),
        "index_is_a_list": lambda folder: (folder / "model_index.json").write_text("[1, 2]"),
    }
    for name, change in cases.items():
        with pytest.raises(ModelLoadError) as info:
            DiffusionEncoder.from_pretrained(damaged(name, change), device="cpu")
        assert "\n" not in str(info.value).strip() and name in str(info.value), (name, str(info.value))


def test_seed_outside_a_torch_generators_range_is_refused_up_front(tiny_sd_path):
    """2**64 passed every check and failed at the first encode with a raw ValueError (Overflow when unpacking)."""
    from diffcut_engine.config import EngineConfig

    for bad in (2**64, -2**63 - 1):
        with pytest.raises(InputError, match="seed must be in"):
            EngineConfig(backbone="efficientnet-lite0", seed=bad)
        with pytest.raises(InputError, match="seed must be in"):
            DiffusionEncoder.from_pretrained(tiny_sd_path, device="cpu", seed=bad)
    assert EngineConfig(backbone="efficientnet-lite0", seed=2**64 - 1).seed == 2**64 - 1
