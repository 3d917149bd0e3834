"""AutoSC (graph/autosc.py, method="autosc") against a literal reference of the official computation."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from planted import planted_features, planted_regions, same_partition

from diffcut_engine.errors import InputError
from diffcut_engine.graph import autosc, autosc_labels


def official_autosc(features, alphas=(1, 5, 10, 15), *, last_alpha_bug=True):
    """The official ``DiffCut_AutoSC.ncut`` written out literally (float32 torch, scipy QR/SVD); returns the raw
    cluster ids (N,), the selected alpha and K. ``last_alpha_bug=False`` slices the selected alpha's vectors."""
    from scipy.linalg import qr, svd

    h, w, c = features.shape
    x = torch.from_numpy(np.ascontiguousarray(features)).float().reshape(h * w, c).T  # (C, N)
    x = F.normalize(x, p=2, dim=0)
    s = x.T @ x
    s = (s - s.min()) / (s.max() - s.min())
    max_gap, chosen = 0, None
    for alpha in alphas:
        a = s ** alpha
        d = torch.diag(torch.sum(a, axis=1))
        d_isqrt = torch.diag(1 / torch.diag(d) ** 0.5)
        lam, vecs = torch.linalg.eigh(d_isqrt @ (d - a) @ d_isqrt)
        vecs = d_isqrt @ vecs
        cummean = torch.cumsum(lam, dim=0) / torch.arange(1, lam.numel() + 1)
        reg = (lam - cummean) / (cummean + 1e-6)
        if torch.max(reg) > max_gap:
            max_gap = torch.max(reg)
            k = int(torch.argmax(reg))
            chosen = (alpha, vecs)
    selected = vecs if last_alpha_bug else chosen[1]
    v = selected[:, :k].numpy()
    _, _, piv = qr(v.T, pivoting=True)
    ut, _, vt = svd(v[piv[:k], :].T)
    raw = abs(np.dot(v, np.dot(ut, vt.conj()))).argmax(axis=1)
    return raw, chosen[0], k


def relabel(raw, shape):
    return np.unique(raw, return_inverse=True)[1].reshape(shape)


CASES = [("quadrants", 0.35, 0), ("disc", 0.5, 1), ("stripes", 0.6, 2), ("quadrants", 0.9, 3)]


@pytest.mark.parametrize("kind,noise,seed", CASES)
def test_official_mode_matches_literal_reference(kind, noise, seed):
    regions = planted_regions(12, 14, kind)
    feats = planted_features(regions, channels=32, noise=noise, seed=seed)
    raw, alpha, k = official_autosc(feats)
    res = autosc(feats, compat="official")
    assert (res.alpha, res.num_clusters) == (alpha, k)
    np.testing.assert_array_equal(res.labels, relabel(raw, regions.shape))
    assert res.labels.dtype == np.int32 and res.labels.shape == regions.shape


@pytest.mark.parametrize("kind,noise,seed", CASES)
def test_clean_mode_uses_the_selected_alphas_vectors(kind, noise, seed):
    regions = planted_regions(12, 14, kind)
    feats = planted_features(regions, channels=32, noise=noise, seed=seed)
    raw, alpha, k = official_autosc(feats, last_alpha_bug=False)
    res = autosc(feats)
    assert (res.alpha, res.num_clusters) == (alpha, k)
    assert same_partition(res.labels, relabel(raw, regions.shape))


def test_recovers_planted_regions_and_k():
    regions = planted_regions(16, 16, "stripes")
    feats = planted_features(regions, channels=48, noise=0.2, seed=5)
    res = autosc(feats)
    assert res.num_clusters == 5
    assert same_partition(res.labels, regions)


def test_last_alpha_bug_is_reproduced_in_official_mode_only():
    # A case where alpha 10 wins: the official code then clusters alpha 15's eigenvectors.
    regions = planted_regions(12, 12, "quadrants")
    feats = planted_features(regions, channels=16, noise=0.9, seed=0)
    off, clean = autosc(feats), autosc(feats, compat="clean")
    assert same_partition(autosc(feats, compat="official-float32").labels, off.labels)
    raw_bug, alpha, k = official_autosc(feats)
    raw_fixed, _, _ = official_autosc(feats, last_alpha_bug=False)
    assert alpha == off.alpha == clean.alpha == 10 and k == off.num_clusters == clean.num_clusters
    np.testing.assert_array_equal(off.labels, relabel(raw_bug, regions.shape))
    assert same_partition(clean.labels, relabel(raw_fixed, regions.shape))
    assert not same_partition(off.labels, clean.labels)


def test_constant_features_give_one_segment():
    feats = np.ones((6, 7, 5), np.float32)
    labels = autosc_labels(feats)
    assert labels.shape == (6, 7) and labels.max() == 0


@pytest.mark.parametrize("bad", [(), (0,), (1, -2), 3])
def test_bad_alphas(bad):
    with pytest.raises(InputError):
        autosc_labels(np.random.rand(4, 4, 3), bad)


def test_bad_features():
    with pytest.raises(InputError):
        autosc_labels(np.random.rand(4, 3))
    with pytest.raises(InputError):
        autosc_labels(np.full((4, 4, 3), np.nan))
    with pytest.raises(InputError):
        autosc_labels(np.random.rand(4, 4, 3), compat="fast")


def _two_colour_image(h=256, w=320):
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = (220, 30, 30)
    img[:, w // 2:] = (20, 40, 210)
    img[h // 2:, w // 2:] = (30, 200, 40)
    noise = np.random.default_rng(0).integers(-25, 26, size=img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def test_engine_method_autosc_runs_stages_and_matches_graph_function():
    from toy_encoder import ColourEncoder

    from diffcut_engine.config import EngineConfig
    from diffcut_engine.engine import Engine

    cfg = EngineConfig(method="autosc", size=(256, 320), refine=False, device="cpu")
    engine = Engine(cfg, encoder=ColourEncoder())
    img = _two_colour_image()
    seg = engine.segment(img)
    feats = engine.encode([img])[0]
    np.testing.assert_array_equal(seg.grid_labels, autosc_labels(feats.numpy()))
    assert seg.labels.shape == img.shape[:2] and seg.num_segments == 3
    assert same_partition(seg.labels[8::16, 8::16], (img[8::16, 8::16, 0] > 100) * 2 + (img[8::16, 8::16, 2] > 100))
    assert "autosc" in repr(engine)
    # no NCut threshold: tau is None, in the result and in its masks JSON (0.0 read as a threshold of 0)
    assert seg.tau is None and seg.to_coco()["tau"] is None
    with pytest.raises(InputError):
        engine.segment(img, return_tree=True)


def test_cli_method_autosc_is_accepted():
    import argparse

    from diffcut_engine.cli.options import add_engine_options, config_from_args

    p = argparse.ArgumentParser()
    add_engine_options(p)
    cfg = config_from_args(p.parse_args(["--method", "autosc", "--backbone", "efficientnet-lite0"]))
    assert cfg.method == "autosc"


def test_eval_runner_method_autosc(tmp_path):
    from eval_fixtures import make_dataset
    from toy_encoder import ColourEncoder

    from diffcut_engine.config import EngineConfig
    from diffcut_engine.engine import Engine
    from diffcut_engine.eval.datasets import get_dataset
    from diffcut_engine.eval.runner import evaluate

    ds = get_dataset(*make_dataset("voc-d2", tmp_path, n=2, size=(72, 96))[:2])
    engine = Engine(EngineConfig(size=64, device="cpu"), encoder=ColourEncoder())
    res = evaluate(ds, engine, eval_size=32, progress=False, method="autosc")
    assert res["settings"]["method"] == "autosc" and res["num_images"] == 2 and not res["failed"]
    with pytest.raises(InputError):
        evaluate(ds, engine, taus=(0.3, 0.5), eval_size=32, progress=False, method="autosc")
