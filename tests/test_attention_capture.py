"""Attention capture (encoders/attention.py) and method="rwncut" end to end (Engine, CLI, eval)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffcut_engine import Engine, EngineConfig
from diffcut_engine.cli import main
from diffcut_engine.encoders.attention import (AttentionExtractor, capture_attention, select_layers,
                                               self_attention_layers)


class StoreAllProcessor:
    """The literal computation: keeps every layer's full (B, heads, n, n) probabilities."""

    def __init__(self, store, path):
        self.store, self.path = store, path

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        b, n, _ = hidden_states.shape
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(hidden_states))
        v = attn.head_to_batch_dim(attn.to_v(hidden_states))
        probs = attn.get_attention_scores(q, k)  # (B*heads, n, n)
        self.store.append((self.path, probs.reshape(b, attn.heads, n, n)))
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


def literal_aggregate(store, layers, latent_size, grid_factor, weights="side"):
    """DiffSeg's aggregation, written out: head mean, bilinear key upsampling, row renormalisation, query repeat,
    per-layer 1/count and per-resolution side weights."""
    factor_of = {layer.path: layer.factor for layer in layers}
    H, W = latent_size[0] // grid_factor, latent_size[1] // grid_factor
    counts = {}
    for path, _ in store:
        counts[factor_of[path]] = counts.get(factor_of[path], 0) + 1
    res_w = {f: (1.0 / f if weights == "side" else 1.0) for f in counts}
    total_w = sum(res_w.values())
    out = 0
    for path, probs in store:
        f = factor_of[path]
        hl, wl = latent_size[0] // f, latent_size[1] // f
        m = probs.mean(1)  # (B, n, n)
        b, n, _ = m.shape
        keys = F.interpolate(m.reshape(b * n, 1, hl, wl), size=(H, W), mode="bilinear", align_corners=False)
        keys = keys.reshape(b, n, H * W)
        keys = keys / keys.sum(-1, keepdim=True)
        rows = keys.reshape(b, hl, wl, H * W).repeat_interleave(H // hl, 1).repeat_interleave(W // wl, 2)
        out = out + rows.reshape(b, H * W, H * W) * (res_w[f] / total_w / counts[f])
    return out / out.sum(-1, keepdim=True)


def profiled_peak(fn):
    """Peak bytes allocated by torch on the CPU during ``fn()``, from the profiler's memory events replayed in
    time order (allocations are attributed to the op that made them, frees are "[memory]" events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    current = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
        peak = max(peak, current)
    return peak, result


def literal_run(enc, pixels, layers, grid_factor, plain=False):
    """The literal aggregate (or, with ``plain``, the same UNet call with the default processors)."""
    store = []
    saved = {}
    for layer in [] if plain else layers:
        mod = enc.unet.get_submodule(layer.path)
        saved[layer.path] = mod.processor
        mod.set_processor(StoreAllProcessor(store, layer.path))
    try:
        with torch.no_grad():
            lat = enc.encode_latents(pixels)
            hidden, added = enc.conditioning(pixels.shape[-2], pixels.shape[-1], pixels.shape[0])
            ts = torch.full((pixels.shape[0],), 300, dtype=torch.long)
            enc.unet(lat, ts, encoder_hidden_states=hidden, added_cond_kwargs=added)
            if plain:
                return None
            return literal_aggregate(store, layers, lat.shape[-2:], grid_factor)
    finally:
        for path, proc in saved.items():
            enc.unet.get_submodule(path).set_processor(proc)


def pixels(b, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((b, 3, h, w), generator=g) * 2 - 1


@pytest.mark.parametrize("which,size", [("sd", 64), ("sdxl", 128)])
def test_aggregate_equals_literal_computation(which, size, request):
    enc = request.getfixturevalue(f"tiny_{which}_encoder")
    x = pixels(2, size, size)
    ex = AttentionExtractor(enc)
    P = ex.extract(x)
    ref = literal_run(enc, x, ex.layers, ex.grid_factor)
    torch.testing.assert_close(P, ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(P.sum(-1), torch.ones(P.shape[:2]))
    assert P.min() > 0 and ex.grid_size(size, size) == (size // ex.stride,) * 2
    # SD 1.x: self-attention at factors 1, 2, 4 (+ the mid block's 8); SDXL-type: 2 and 4 only
    assert sorted({la.factor for la in ex.layers}) == ([1, 2, 4, 8] if which == "sd" else [2, 4])


def test_capture_keeps_the_unet_output_and_restores_processors(tiny_sdxl_encoder):
    enc = tiny_sdxl_encoder
    layers = select_layers(enc.unet, factors=(4,))
    assert layers and all(la.factor == 4 for la in layers) and len(layers) < len(self_attention_layers(enc.unet))
    before = {k: type(v) for k, v in enc.unet.attn_processors.items()}
    lat = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    hidden, added = enc.conditioning(128, 128, 1)
    t = torch.tensor([300])
    with torch.no_grad():
        plain = enc.unet(lat, t, encoder_hidden_states=hidden, added_cond_kwargs=added).sample
        from diffcut_engine.encoders.attention import AttentionAggregator

        agg = AttentionAggregator((16, 16), layers, 4)
        with capture_attention(enc.unet, layers, agg):
            captured = enc.unet(lat, t, encoder_hidden_states=hidden, added_cond_kwargs=added).sample
    torch.testing.assert_close(captured, plain, rtol=1e-4, atol=1e-5)
    assert {k: type(v) for k, v in enc.unet.attn_processors.items()} == before
    assert agg.total.shape == (1, 16, 16)


def test_peak_memory_below_the_literal_computation(tiny_sdxl_encoder):
    """At 256 px the tiny SDXL UNet has ten self-attention layers on a 16x16 grid (4 heads, 256 KiB per head
    matrix): the literal computation holds all of them (10 MiB); the processor holds one head, one head-mean
    and the (N, N) aggregate (256 KiB each). Peaks are measured with torch's profiler (tracemalloc does not see
    torch's allocator) and compared as the excess over the same VAE + UNet call with the default processors,
    whose activations (the VAE's, at this size) are common to all three."""
    enc = tiny_sdxl_encoder
    x = pixels(1, 256, 256, seed=3)
    ex = AttentionExtractor(enc)
    peak_plain, _ = profiled_peak(lambda: literal_run(enc, x, ex.layers, ex.grid_factor, plain=True))
    peak_ours, P = profiled_peak(lambda: ex.extract(x))
    peak_literal, ref = profiled_peak(lambda: literal_run(enc, x, ex.layers, ex.grid_factor))
    torch.testing.assert_close(P, ref, rtol=1e-5, atol=1e-7)
    stored = sum(4 * 256 * 256 * 4 for la in ex.layers if la.factor == 2)  # the factor-2 layers' head matrices
    # measured on this machine: plain 8.4 MB (the VAE), ours 8.4 MB, literal 13.7 MB (UNet activations + store)
    assert peak_ours <= peak_plain + 0.1 * stored, (peak_ours, peak_plain, stored)
    assert peak_literal - peak_ours > 0.4 * stored, (peak_literal, peak_ours, stored)


def test_inversion_and_noise_modes(tiny_sdxl_encoder):
    enc = tiny_sdxl_encoder
    x = pixels(1, 128, 128, seed=4)
    enc.scheduler.set_timesteps(50)
    first = min(int(t) for t in enc.scheduler.timesteps)
    one_step = AttentionExtractor(enc, mode="inversion", steps=1).extract(x)
    single = AttentionExtractor(enc, mode="single", timestep=first).extract(x)
    torch.testing.assert_close(one_step, single, rtol=1e-5, atol=1e-7)  # step 1 runs the UNet on the clean latent
    three = AttentionExtractor(enc, mode="inversion", steps=3).extract(x)
    torch.testing.assert_close(three.sum(-1), torch.ones(three.shape[:2]))
    assert not torch.allclose(three, one_step)
    noised = AttentionExtractor(enc, timestep=300, noise=True).extract(x)
    clean = AttentionExtractor(enc, timestep=300).extract(x)
    assert not torch.allclose(noised, clean)


def test_engine_rwncut_end_to_end(tiny_sdxl_path):
    img = (np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)
    img[:, :64] = (200, 30, 30)
    base = dict(device="cpu", dtype="fp32", size=128, method="rwncut")
    eng = Engine.from_pretrained(tiny_sdxl_path, refine=False, rwncut=dict(min_size=4), **base)
    assert "rwncut(source=attention" in repr(eng)
    seg = eng.segment(img)
    assert seg.grid_labels.shape == (8, 8) and seg.labels.shape == (96, 128)
    assert seg.num_segments == seg.grid_labels.max() + 1 >= 1
    assert set(np.unique(seg.labels)) <= set(range(seg.num_segments))
    P = eng.method_pipeline.extractor.extract(pixels(1, 128, 128))
    assert P.shape == (1, 64, 64)  # (128 / 16)^2 nodes: the finest SDXL-type attention grid
    # concept labels + PAMR, constant threshold (its NCut tree is kept)
    eng2 = Engine(EngineConfig(model=tiny_sdxl_path, **base, pamr_iters=2,
                               rwncut=dict(labels="concept", threshold="constant", graph="cooccurrence", k=2)),
                  encoder=eng.encoder)
    seg2 = eng2.segment(img)
    assert seg2.tree is not None and seg2.labels.shape == (96, 128)
    with pytest.raises(Exception, match="rwncut"):
        eng.segment(img, tree_tau_max=0.9)


def test_engine_rwncut_on_the_feature_walk(tiny_sd_path):
    eng = Engine.from_pretrained(tiny_sd_path, device="cpu", dtype="fp32", size=64, method="rwncut", refine=False,
                                 rwncut=dict(source="features", min_size=1))
    seg = eng.segment((np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8))
    assert seg.grid_labels.shape == (2, 2) and eng.method_pipeline.source == "features"


def test_cli_segment_method_rwncut(tiny_sdxl_path, tmp_path, capsys):
    from PIL import Image

    src = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(2).random((64, 96, 3)) * 255).astype(np.uint8)).save(src)
    out = tmp_path / "out"
    code = main(["segment", str(src), "-o", str(out), "--model", tiny_sdxl_path, "--size", "96x64", "--device",
                 "cpu", "-q", "--save-npy", "--no-refine", "--method", "rwncut", "--rw-threshold", "mean",
                 "--rw-min-size", "2", "--rw-factors", "2,4", "--rw-labels", "concept"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    labels = np.load(out / "img_labels.npy")
    assert labels.shape == (64, 96)
    summary = json.loads((out / "summary.json").read_text())
    assert "rwncut(source=attention, graph=flow, k=1, threshold=mean, min_size=2)" in summary["engine"]
    assert main(["segment", str(src), "-o", str(out), "--method", "rwncut", "--rw-k", "0", "--model",
                 tiny_sdxl_path]) == 2


def test_eval_accepts_rwncut(tmp_path):
    from eval_fixtures import make_dataset
    from toy_encoder import ColourEncoder

    from diffcut_engine.eval import get_dataset
    from diffcut_engine.eval.runner import evaluate

    key, root, _, _ = make_dataset("voc-devkit", tmp_path / "voc", n=2, size=(64, 80))
    ds = get_dataset(key, root)
    eng = Engine(EngineConfig(size=128, device="cpu", refine=False), encoder=ColourEncoder())
    res = evaluate(ds, eng, eval_size=32, progress=False, method="rwncut", out=tmp_path / "run")
    assert res["settings"]["method"] == "rwncut" and res["settings"]["rwncut"]["threshold"] == "tree"
    assert res["results"][0]["miou"] is not None and not res["failed"]
    with pytest.raises(Exception, match="one tau"):
        evaluate(ds, eng, taus=(0.3, 0.5), eval_size=32, progress=False, method="rwncut")
