import numpy as np
import pytest
import torch
from PIL import Image

from diffcut_engine import BatchError, EngineConfig, InputError
from diffcut_engine.engine import Engine, Segmentation

from toy_encoder import ColourEncoder


def two_colour_image(h=96, w=128, edge=50):
    """Left of column ``edge`` dark red, right of it light blue, with mild noise."""
    rng = np.random.default_rng(0)
    img = np.zeros((h, w, 3), dtype=np.float32)
    img[:, :edge] = (0.6, 0.1, 0.1)
    img[:, edge:] = (0.5, 0.7, 0.95)
    img += rng.normal(scale=0.02, size=img.shape)
    return (img.clip(0, 1) * 255).round().astype(np.uint8)


@pytest.fixture
def engine():
    return Engine(EngineConfig(size=(96, 128), tau=0.5, device="cpu"), encoder=ColourEncoder())


def region_accuracy(labels, edge):
    """Fraction of pixels carrying the majority label of their true side of the edge."""
    acc = 0
    for part in (labels[:, :edge], labels[:, edge:]):
        acc += np.bincount(part.ravel()).max()
    return acc / labels.size


def test_segments_two_regions_at_image_size(engine):
    img = two_colour_image(edge=64)
    seg = engine.segment(img)
    assert isinstance(seg, Segmentation)
    assert seg.labels.shape == (96, 128) and seg.labels.dtype == np.int32
    assert seg.grid_labels.shape == (3, 4) and seg.num_segments == 2
    assert region_accuracy(seg.labels, 64) == 1.0 and seg.labels[0, 0] != seg.labels[0, -1]
    assert set(seg.timings) >= {"load", "preprocess", "encode", "graph", "assign", "refine", "total"}
    assert all(v >= 0 for v in seg.timings.values())
    assert seg.tau == 0.5 and seg.image_size == (96, 128) and seg.crop_box == (0, 0, 96, 128)


def test_without_refine_boundary_is_coarser(engine):
    img = two_colour_image(edge=60)
    coarse = Engine(engine.config.replace(refine=False), encoder=engine.encoder).segment(img)
    fine = engine.segment(img)
    # the edge at column 60 cuts a 32 px cell: concept assignment puts the boundary near the cell border, PAMR
    # moves it onto the edge
    assert region_accuracy(coarse.labels, 60) < 0.99
    assert region_accuracy(fine.labels, 60) == 1.0


def test_accepts_every_input_type(engine, tmp_path):
    img = two_colour_image()
    path = tmp_path / "img.png"
    Image.fromarray(img).save(path)
    forms = [path, str(path), Image.fromarray(img), img, img.astype(np.float32) / 255,
             torch.from_numpy(img).permute(2, 0, 1).float() / 255, torch.from_numpy(img).permute(2, 0, 1)]
    results = engine.segment(forms)
    assert isinstance(results, list) and len(results) == len(forms)
    for r in results[1:]:
        np.testing.assert_array_equal(r.labels, results[0].labels)
    assert results[0].name == "img.png"


def test_batches_through_the_encoder(engine):
    imgs = [two_colour_image(edge=e) for e in (40, 50, 60, 70, 80)]
    engine.encoder.calls = 0
    batched = engine.segment(imgs)
    assert engine.encoder.calls == 2  # batch_size 4: one call of 4, one of 1
    singles = [engine.segment(i) for i in imgs]
    for a, b in zip(batched, singles):
        np.testing.assert_array_equal(a.labels, b.labels)


def test_bad_item_keeps_finished_results(engine, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    good = two_colour_image()
    with pytest.raises(BatchError) as info:
        engine.segment([good, bad, good, tmp_path / "missing.png"])
    err = info.value
    assert err.results[0] is not None and err.results[2] is not None
    assert err.results[1] is None and err.results[3] is None
    assert "cannot decode" in str(err.errors[1]) and "not found" in str(err.errors[3])
    skipped = engine.segment([good, bad], errors="skip")
    assert skipped[1] is None and skipped[0].num_segments >= 2
    with pytest.raises(InputError, match="broken.jpg: cannot decode"):
        engine.segment(bad)


def test_output_size_and_center_crop():
    img = two_colour_image(h=100, w=140)
    enc = ColourEncoder()
    seg = Engine(EngineConfig(size=64, tau=0.5, output_size="70x50"), encoder=enc).segment(img)
    assert seg.labels.shape == (50, 70)
    crop = Engine(EngineConfig(size=64, tau=0.5, resize_mode="center_crop"), encoder=enc).segment(img)
    assert crop.crop_box == (0, 20, 99, 99) and crop.labels.shape == (99, 99)


def test_tau_override_and_features(engine):
    rng = np.random.default_rng(1)
    blocks = rng.integers(0, 255, size=(3, 4, 3)).astype(np.uint8)
    img = np.kron(blocks, np.ones((32, 32, 1), dtype=np.uint8))
    few = engine.segment(img, tau=0.05)
    many = engine.segment(img, tau=0.9, return_features=True)
    assert many.num_segments > few.num_segments
    assert many.features.shape == (3, 4, 21) and few.features is None
    with pytest.raises(InputError, match="tau"):
        engine.segment(img, tau=-1)


def test_non_square_grid():
    img = two_colour_image(h=64, w=96)
    seg = Engine(EngineConfig(size="96x64", tau=0.5), encoder=ColourEncoder()).segment(img)
    assert seg.grid_labels.shape == (2, 3)


def test_unknown_backbone_and_model_errors():
    with pytest.raises(InputError, match="backbone"):
        EngineConfig(backbone="resnet")


# ------------------------------------------------------------------------------------------------------------
# End to end through the real diffusers loading path (tiny random-weight pipelines)
# ------------------------------------------------------------------------------------------------------------

def test_engine_from_pretrained_tiny_sdxl(tiny_sdxl_path):
    engine = Engine.from_pretrained(tiny_sdxl_path, size="96x64", device="cpu", dtype="fp32")
    assert engine.encoder.family == "sdxl" and engine.tau == 0.5
    img = two_colour_image(h=80, w=120)
    seg = engine.segment(img, return_features=True)
    assert seg.grid_labels.shape == (2, 3) and seg.labels.shape == (80, 120)
    # the graph stage ran on exactly the encoder's features
    from diffcut_engine.graph import recursive_ncut
    np.testing.assert_array_equal(seg.grid_labels, recursive_ncut(seg.features, alpha=10.0, tau=0.5))
    feats = engine.encode(img)
    np.testing.assert_allclose(feats[0].numpy(), seg.features, atol=1e-6)


def test_engine_sd_family_uses_tau_preset(tiny_sd_path):
    engine = Engine.from_pretrained(tiny_sd_path, size=64, device="cpu")
    assert engine.encoder.family == "sd" and engine.tau == 0.2
    assert Engine.from_pretrained(tiny_sd_path, size=64, tau=0.7).tau == 0.7


def test_one_call_segment_api_caches_engine(tiny_sdxl_path):
    import diffcut_engine
    from diffcut_engine import engine as engine_mod

    img = two_colour_image(h=64, w=64)
    a = diffcut_engine.segment(img, model=tiny_sdxl_path, size=64, device="cpu")
    cached = next(iter(engine_mod._ENGINE_CACHE.values()))
    b = diffcut_engine.segment(img, model=tiny_sdxl_path, size=64, device="cpu")
    assert next(iter(engine_mod._ENGINE_CACHE.values())) is cached
    np.testing.assert_array_equal(a.labels, b.labels)


def test_missing_model_is_model_load_error(tmp_path):
    from diffcut_engine import ModelLoadError

    with pytest.raises(ModelLoadError, match="nowhere"):
        Engine.from_pretrained(str(tmp_path / "nowhere"))


def test_return_tree_gives_every_granularity(engine):
    rng = np.random.default_rng(2)
    blocks = rng.integers(0, 255, size=(3, 4, 3)).astype(np.uint8)
    img = np.kron(blocks, np.ones((32, 32, 1), dtype=np.uint8))
    seg = engine.segment(img, tau=0.3, tree_tau_max=0.9)
    assert seg.tree is not None and seg.tree.tau_max == 0.9
    np.testing.assert_array_equal(seg.tree.cut(0.3), seg.grid_labels)
    for t in (0.05, 0.3, 0.6, 0.9):
        np.testing.assert_array_equal(seg.tree.cut(t), engine.segment(img, tau=t).grid_labels)
    assert engine.segment(img).tree is None
    assert engine.segment(img, return_tree=True).tree.tau_max == engine.tau
    with pytest.raises(InputError, match="tree_tau_max"):
        engine.segment(img, tau=0.5, tree_tau_max=0.2)


def test_at_tau_equals_a_fresh_run(engine):
    rng = np.random.default_rng(3)
    blocks = rng.integers(0, 255, size=(3, 4, 3)).astype(np.uint8)
    img = np.kron(blocks, np.ones((32, 32, 1), dtype=np.uint8))
    res = next(engine.iter_segment([img], tau=0.1, tree_tau_max=0.9, return_features=True, return_image=True))
    for t in (0.1, 0.5, 0.9):
        other = engine.at_tau(res.segmentation, t, res.image)
        fresh = engine.segment(img, tau=t)
        np.testing.assert_array_equal(other.labels, fresh.labels)
        assert other.tau == t and other.num_segments == fresh.num_segments
    with pytest.raises(InputError, match="return_features"):
        engine.at_tau(engine.segment(img), 0.3, res.image)


class StaticBufferEncoder(ColourEncoder):
    """Keeps its input in a buffer made at the first call and updated in place later, as a CUDA-graph capture
    keeps its static inputs (encoders/diffusion.py ``_graph_call``)."""

    def __init__(self):
        super().__init__()
        self.static = None

    def encode(self, pixels):
        if self.static is None:
            self.static = pixels.clone()
        self.static.copy_(pixels)
        return super().encode(self.static)


def test_encode_buffers_work_in_and_out_of_inference_mode():
    """Issue 21: buffers an encoder creates during ``Engine.encode`` are ordinary tensors, so a later call outside
    inference mode can update them in place, and so are the features it returns."""
    engine = Engine(EngineConfig(size=(96, 128), tau=0.5), encoder=StaticBufferEncoder())
    img = two_colour_image(edge=64)
    feats = engine.encode(img)
    assert not feats.is_inference() and not engine.encoder.static.is_inference()
    feats.mul_(1.0)  # in place, outside inference mode
    pixels = engine.preprocess(img).net_input[None]
    np.testing.assert_array_equal(engine.encoder.encode(pixels).numpy(), feats.numpy())  # copy_ outside
    with torch.inference_mode():
        np.testing.assert_array_equal(engine.encoder.encode(pixels).numpy(), feats.numpy())  # copy_ inside
    assert engine.segment(img).num_segments == 2


def test_public_stages_compose_to_segment(engine):
    """preprocess -> encode -> trees -> labels gives exactly what segment gives, field by field."""
    rng = np.random.default_rng(4)
    imgs = [np.kron(rng.integers(0, 255, size=(3, 4, 3)).astype(np.uint8), np.ones((32, 32, 1), np.uint8))
            for _ in range(3)]
    ref = engine.segment(imgs, tau=0.4, tree_tau_max=0.8, return_features=True)
    prepared = [engine.preprocess(x, i) for i, x in enumerate(imgs)]
    assert prepared[1].name == "<ndarray 1>" and prepared[0].net_input.shape == (3, 96, 128)
    features = engine.encode(prepared)
    assert features.shape == (3, 3, 4, 21)
    trees = engine.trees(features, tau_max=0.8)
    assert [t.tau_max for t in trees] == [0.8] * 3
    for p, f, tree, r in zip(prepared, features, trees, ref):
        seg = engine.labels(p, f, tree, tau=0.4, keep_tree=True, keep_features=True)
        np.testing.assert_array_equal(seg.labels, r.labels)
        np.testing.assert_array_equal(seg.grid_labels, r.grid_labels)
        np.testing.assert_array_equal(seg.features, r.features)
        assert (seg.num_segments, seg.tau, seg.name, seg.image_size, seg.crop_box) == \
            (r.num_segments, r.tau, r.name, r.image_size, r.crop_box)
        assert set(seg.timings) == set(r.timings) - {"encode"}  # encode seconds are the caller's to add
    # encode takes images as well as prepared inputs; trees takes a list of grids
    np.testing.assert_array_equal(engine.encode(imgs).numpy(), features.numpy())
    np.testing.assert_array_equal(engine.trees(list(features), tau_max=0.8)[2].cut(0.5), trees[2].cut(0.5))
    assert engine.graph_namespace(features) is None  # CPU features: the host graph stage
    with pytest.raises(InputError, match="tau_max"):
        engine.labels(prepared[0], features[0], trees[0], tau=0.9)
    with pytest.raises(InputError, match="tau"):
        engine.trees(features, tau_max=0)


def test_results_are_immutable(engine):
    import dataclasses

    seg = engine.segment(two_colour_image(edge=64))
    with pytest.raises(dataclasses.FrozenInstanceError):
        seg.labels = seg.labels + 1
    other = seg.replace(name="renamed")
    assert other.name == "renamed" and seg.name == "<ndarray 0>" and other.labels is seg.labels
    res = next(engine.iter_segment([two_colour_image()]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.error = None
    import diffcut_engine
    from diffcut_engine import result

    assert diffcut_engine.Segmentation is result.Segmentation is Segmentation
    assert diffcut_engine.SegmentResult is result.SegmentResult


def test_iter_segment_batch_size_is_validated(engine):
    """A batch size of -1 or 0 used to give no results at all (an empty range), silently."""
    img = np.zeros((40, 50, 3), np.uint8)
    for bad in (-1, 0, 1.5, True):
        with pytest.raises(InputError, match="batch_size"):
            list(engine.iter_segment([img, img], batch_size=bad))
    assert [r.ok for r in engine.iter_segment([img, img, img], batch_size=np.int64(2))] == [True] * 3


def test_stage_api_bad_arguments_are_input_errors_and_numpy_grids_work(engine):
    """encode([]) was a RuntimeError from torch.stack, trees(numpy) an AttributeError, trees(one (h, w, C) grid)
    a confusing 'got shape (w, C)', labels(..., trees) an AttributeError."""
    img = np.zeros((40, 50, 3), np.uint8)
    img[:, 25:] = 200
    with pytest.raises(InputError, match="empty batch"):
        engine.encode([])
    prepared = [engine.preprocess(img)]
    features = engine.encode(prepared)
    ref = engine.trees(features)[0].cut(0.5)
    for grids in (features.numpy(), [features[0].numpy()], list(features)):
        np.testing.assert_array_equal(engine.trees(grids)[0].cut(0.5), ref)
    with pytest.raises(InputError, match=r"one grid: pass \[grid\]"):
        engine.trees(features[0])
    with pytest.raises(InputError, match="feature grid 0"):
        engine.trees(["not a grid"])
    trees = engine.trees(features)
    with pytest.raises(InputError, match="NCutTree"):
        engine.labels(prepared[0], features[0], trees)
    assert engine.labels(prepared[0], features[0], trees[0]).labels.shape == (40, 50)


def test_generators_are_streamed_one_batch_at_a_time(engine, tmp_path):
    """iter_segment drained a generator before the first result (an endless camera feed never yielded; a video held
    every frame in memory); segment(generator) took it for one image ("unsupported image type generator")."""
    import io

    pulled = []

    def frames(n):
        for i in range(n):
            pulled.append(i)
            yield two_colour_image(edge=40 + 10 * (i % 5))

    stream = engine.iter_segment(frames(10**6), batch_size=2)
    first = next(stream)
    assert first.ok and first.index == 0 and len(pulled) == 2
    second, third = next(stream), next(stream)
    assert (second.index, third.index) == (1, 2) and len(pulled) == 4
    results = engine.segment(frames(5))
    assert isinstance(results, list) and len(results) == 5
    want = engine.segment([two_colour_image(edge=40 + 10 * i) for i in range(5)])
    for a, b in zip(results, want):
        np.testing.assert_array_equal(a.labels, b.labels)
    assert [r.index for r in engine.iter_segment(iter([two_colour_image()] * 3), batch_size=2)] == [0, 1, 2]
    # a file-like object (an iterator too) is taken as one input, not as a stream of lines
    from diffcut_engine.errors import InputError

    with pytest.raises(InputError, match="unsupported image type BytesIO"):
        engine.segment(io.BytesIO(b"not an image"))
