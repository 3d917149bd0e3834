"""Open-vocabulary naming (diffcut_engine/openvocab): vocabularies, the official classifier (literal reference),
and tiny random CLIP models of both kinds with the text side planted so that the right class must win."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffcut_engine.errors import InputError
from diffcut_engine.openvocab import (SegmentNamer, Vocabulary, class_probabilities, classification_logits,
                                      load_clip, mask_pool, official_vocabulary, text_classifier)
from diffcut_engine.openvocab.clip import OpenClipBackend, TransformersClipBackend, clip_kind

# The 14 templates of the official tools/clip_classifier.py (VILD_PROMPT), written out here as the reference.
OFFICIAL_TEMPLATES = [
    "a photo of a {}.", "This is a photo of a {}", "There is a {} in the scene", "There is the {} in the scene",
    "a photo of a {} in the scene", "a photo of a small {}.", "a photo of a medium {}.", "a photo of a large {}.",
    "This is a photo of a small {}.", "This is a photo of a medium {}.", "This is a photo of a large {}.",
    "There is a small {} in the scene.", "There is a medium {} in the scene.", "There is a large {} in the scene.",
]


# ------------------------------------------------------------------------------------------------------------
# Literal reference of the official computation (clip_classifier.py: prepare_class_names_from_metadata,
# get_text_classifier, get_classification_logits; eval_diffcut_openvoc.py: associate_label's argmax)
# ------------------------------------------------------------------------------------------------------------

def official_text_classifier(encode, class_names):
    def split_labels(x):
        res = []
        for x_ in x:
            x_ = x_.replace(', ', ',')
            x_ = x_.split(',')
            res.append(x_)
        return res

    num_templates, templated = [], []
    for x in split_labels(class_names):
        res = []
        for s in x:
            for template in OFFICIAL_TEMPLATES:
                res.append(template.format(s))
        templated += res
        num_templates.append(len(res) // len(OFFICIAL_TEMPLATES))
    feats = []
    for idx in range(0, len(templated), 128):
        feats.append(encode(templated[idx:idx + 128]).detach())
    feats = torch.cat(feats, dim=0)
    feats /= feats.norm(dim=-1, keepdim=True)
    feats = feats.reshape(feats.shape[0] // len(OFFICIAL_TEMPLATES), len(OFFICIAL_TEMPLATES), feats.shape[-1]).mean(1)
    feats /= feats.norm(dim=-1, keepdim=True)
    return feats, num_templates


def official_logits(x, text_classifier, logit_scale, num_templates):
    x = F.normalize(x, dim=-1)
    logit_scale = torch.clamp(logit_scale.exp(), max=100)
    pred_logits = logit_scale * x @ text_classifier.T
    final = []
    cur_idx = 0
    for num_t in num_templates:
        final.append(pred_logits[:, :, cur_idx: cur_idx + num_t].max(-1).values)
        cur_idx += num_t
    final.append(pred_logits[:, :, -1])
    return torch.stack(final, dim=-1)


# ------------------------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_clip_path(tmp_path_factory):
    from tiny_clip import make_tiny_transformers_clip

    return make_tiny_transformers_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def tiny_open_clip_path(tmp_path_factory):
    try:
        import open_clip  # noqa: F401  (a torchvision built for another torch raises RuntimeError, not ImportError)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"open_clip not usable here: {exc}")
    from tiny_clip import make_tiny_open_clip

    return make_tiny_open_clip(tmp_path_factory.mktemp("tiny_open_clip"))


def three_region_image(size=64, seed=0):
    """A (3, size, size) image in [0, 1] with three colour regions on the 8 px grid, and labels with ids 3, 7, 9."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.float32)
    lab = np.zeros((size, size), np.int64)
    h = size // 2
    img[:, :h] = (0.9, 0.1, 0.1)
    lab[:, :h] = 3
    img[:h, h:] = (0.1, 0.2, 0.9)
    lab[:h, h:] = 7
    img[h:, h:] = (0.1, 0.8, 0.2)
    lab[h:, h:] = 9
    img = np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1).astype(np.float32)
    return torch.from_numpy(img).permute(2, 0, 1), lab


# ------------------------------------------------------------------------------------------------------------
# Vocabulary
# ------------------------------------------------------------------------------------------------------------

def test_vocabulary_forms(tmp_path):
    v = Vocabulary.from_names(["person", "sky, clouds", ("dog", "puppy")])
    assert v.names == ("person", "sky", "dog") and v.synonym_counts == (1, 2, 2)
    assert Vocabulary.parse("person, sky|clouds ,dog|puppy") == v
    f = tmp_path / "classes.txt"
    f.write_text("# comment\n0:invalid_class_id\n1:person\n\n2:sky,clouds\ndog, puppy\n")
    assert Vocabulary.from_file(f) == v
    prompts = v.prompts()
    assert len(prompts) == 14 * 5 and prompts[0] == "a photo of a person." and prompts[14] == "a photo of a sky."
    assert prompts[14 * 2] == "a photo of a clouds."
    for bad in ([], [""], [3], "a,b"):
        with pytest.raises(InputError):
            Vocabulary.from_names(bad)
    with pytest.raises(InputError):
        Vocabulary.from_file(tmp_path / "missing.txt")


def test_official_class_lists():
    sizes = {"voc": 21, "context": 60, "coco-object": 81}
    for key, n in sizes.items():
        v = official_vocabulary(key)
        assert len(v) == n and v.names[0] == "background"
    voc = official_vocabulary("voc")
    assert voc.classes[15][:3] == ("person", "child", "girl") and len(voc.classes[0]) > 50
    assert official_vocabulary("context").classes[0] == ("background",)
    assert official_vocabulary("coco-object").names[-1] == "toothbrush"
    with pytest.raises(InputError):
        official_vocabulary("ade20k")


# ------------------------------------------------------------------------------------------------------------
# The classifier against the literal reference
# ------------------------------------------------------------------------------------------------------------

def test_templates_are_the_official_ones():
    from diffcut_engine.openvocab import VILD_TEMPLATES

    assert list(VILD_TEMPLATES) == OFFICIAL_TEMPLATES


def test_text_classifier_and_logits_match_literal_reference(tiny_clip_path):
    clip = load_clip(tiny_clip_path)
    names = ["person,child,girl", "sky, clouds", "dog", "grass,lawn,turf,field"]
    vocab = Vocabulary.from_names(names)
    ref_text, ref_counts = official_text_classifier(clip.encode_text, names)
    text = text_classifier(clip.encode_text, vocab)
    assert list(vocab.synonym_counts) == ref_counts == [3, 2, 1, 4]
    torch.testing.assert_close(text, ref_text, rtol=1e-5, atol=1e-6)
    # small batches give the same classifier (the official code batches by 128 prompts)
    torch.testing.assert_close(text_classifier(clip.encode_text, vocab, batch_size=5), ref_text, rtol=1e-5,
                               atol=1e-6)
    x = torch.randn(2, 5, text.shape[1], generator=torch.Generator().manual_seed(1))
    for scale in (clip.logit_scale, torch.tensor(5.0), torch.tensor(-1.0)):  # 5.0: exp clamped to 100
        ours = classification_logits(x, text, scale, vocab.synonym_counts)
        ref = official_logits(x, ref_text, scale, ref_counts)
        torch.testing.assert_close(ours, ref)
        assert ours.shape == (2, 5, len(vocab) + 1)
        # void: the last classifier's logit, dropped before the softmax as associate_label does
        torch.testing.assert_close(ours[..., -1], torch.clamp(scale.exp(), max=100) * F.normalize(x, dim=-1)
                                   @ ref_text[-1])
        probs = class_probabilities(ours)
        torch.testing.assert_close(probs, ref[..., :-1].softmax(-1))
        assert torch.equal(probs.argmax(-1), ref[..., :-1].softmax(-1).argmax(-1))
    with pytest.raises(InputError):
        classification_logits(x, text, clip.logit_scale, (1, 1))


def test_mask_pool_matches_official_mask_pooling():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(1, 6, 4, 5, generator=g)
    labels = torch.randint(0, 3, (16, 20), generator=g)
    masks = torch.stack([(labels == k).float() for k in range(4)])[None]  # id 3 is absent: an empty mask
    ours = mask_pool(feats, masks)
    small = F.interpolate(masks, size=(4, 5), mode="nearest-exact")
    small = (small > 0).float()
    ref = torch.einsum("bchw,bqhw->bqc", feats, small / (small.sum(dim=(-1, -2), keepdim=True) + 1e-8))
    torch.testing.assert_close(ours, ref)
    assert torch.all(ours[0, 3] == 0)


# ------------------------------------------------------------------------------------------------------------
# Planted models: every prompt of class c embeds to the image embedding of the region assigned to c
# ------------------------------------------------------------------------------------------------------------

def _region_masks(lab, ids, grid):
    m = torch.stack([torch.from_numpy(lab == i).float() for i in ids])[None]
    return F.interpolate(m, size=grid, mode="nearest-exact")[0]


def _plant(text_hidden, set_projection, vocab, targets):
    """Solve the text projection so that every prompt of class c maps exactly to ``targets[c]``."""
    prompts = vocab.prompts()
    h = text_hidden(prompts).double()  # (P, width)
    per_prompt = torch.stack([targets[c] for c, syn in enumerate(vocab.classes) for _ in syn for _ in range(14)])
    proj = torch.linalg.pinv(h) @ per_prompt.double()  # (width, D): h @ proj = targets
    assert torch.allclose(h @ proj, per_prompt.double(), atol=1e-6)
    set_projection(proj.float())


def _transformers_region_embeddings(clip, image, lab, ids):
    model = clip.model
    px = clip.prepare(image, (64, 64))
    with torch.no_grad():
        tokens = model.vision_model(pixel_values=px, interpolate_pos_encoding=True).last_hidden_state[0, 1:]
        grid = tokens.reshape(8, 8, -1)
        m = _region_masks(lab, ids, (8, 8))
        pooled = torch.stack([grid[mk > 0].mean(0) for mk in m])
        return model.visual_projection(model.vision_model.post_layernorm(pooled))


@pytest.mark.parametrize("assignment", [(0, 1, 2), (2, 0, 1)])
def test_transformers_clip_planted_text_names_every_segment(tiny_clip_path, assignment):
    clip = load_clip(tiny_clip_path)
    assert isinstance(clip, TransformersClipBackend) and clip.normalize
    image, lab = three_region_image()
    ids = (3, 7, 9)
    emb = _transformers_region_embeddings(clip, image, lab, ids)
    cos = F.normalize(emb, dim=-1) @ F.normalize(emb, dim=-1).T
    assert cos[~torch.eye(3, dtype=bool)].max() < 0.999  # the regions are distinguishable at all
    vocab = Vocabulary.from_names(["cat", "sky", "grass"])
    targets = {c: emb[assignment.index(c)] for c in range(3)}  # region r is class assignment[r]

    def hidden(prompts):
        b = clip.tokenizer(prompts, padding=True, return_tensors="pt")
        with torch.no_grad():
            return clip.model.text_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).pooler_output

    def set_projection(p):
        clip.model.text_projection.weight.data = p.T.contiguous()

    _plant(hidden, set_projection, vocab, targets)
    namer = SegmentNamer(clip, vocab, size=64)
    res = namer.name(image, lab)
    assert res.segment_ids == ids
    assert res.class_ids == assignment
    assert res.names == tuple(vocab.names[c] for c in assignment)
    assert all(s > 1 / 3 for s in res.scores)
    expected = np.zeros_like(lab)
    for i, c in zip(ids, assignment):
        expected[lab == i] = c
    np.testing.assert_array_equal(res.class_map, expected)
    assert res.class_map.dtype == np.int32 and res.class_map.shape == lab.shape


@pytest.mark.parametrize("assignment", [(0, 1, 2), (1, 2, 0)])
def test_open_clip_planted_text_names_every_segment(tiny_open_clip_path, assignment):
    clip = load_clip(tiny_open_clip_path)
    assert isinstance(clip, OpenClipBackend) and not clip.normalize  # official: [0, 1] pixels
    image, lab = three_region_image()
    ids = (3, 7, 9)
    model = clip.model
    with torch.no_grad():
        dense = model.visual.trunk.forward_features(image[None])  # (1, C, 2, 2) at 64 px
        m = _region_masks(lab, ids, tuple(dense.shape[-2:]))
        pooled = torch.stack([(dense[0] * mk).sum((1, 2)) / (mk.sum() + 1e-8) for mk in m])
        emb = model.visual.head(model.visual.trunk.head(pooled[:, :, None, None]))
    cos = F.normalize(emb, dim=-1) @ F.normalize(emb, dim=-1).T
    assert cos[~torch.eye(3, dtype=bool)].max() < 0.999
    vocab = Vocabulary.from_names(["cat", "sky", "grass"])
    targets = {c: emb[assignment.index(c)] for c in range(3)}

    def hidden(prompts):
        saved = model.text_projection
        model.text_projection = None
        try:
            with torch.no_grad():
                return model.encode_text(clip.tokenizer(prompts), normalize=False)
        finally:
            model.text_projection = saved

    def set_projection(p):
        model.text_projection.data = p.contiguous()

    _plant(hidden, set_projection, vocab, targets)
    res = SegmentNamer(clip, vocab, size=64).name(image, lab)
    assert res.class_ids == assignment and res.segment_ids == ids


def test_clip_kind_and_errors(tmp_path, tiny_clip_path):
    assert clip_kind(tiny_clip_path) == "transformers"
    assert clip_kind("hf-hub:laion/x") == clip_kind("open_clip:convnext_large_d_320/laion2b") == "open_clip"
    assert clip_kind("openai/clip-vit-base-patch16") == "transformers"
    (tmp_path / "empty").mkdir()
    from diffcut_engine.errors import ModelLoadError

    with pytest.raises(ModelLoadError):
        load_clip(str(tmp_path / "empty"))


# ------------------------------------------------------------------------------------------------------------
# Engine and command line
# ------------------------------------------------------------------------------------------------------------

def test_engine_segment_with_classes(tiny_clip_path):
    from toy_encoder import ColourEncoder

    from diffcut_engine.config import EngineConfig
    from diffcut_engine.engine import Engine

    engine = Engine(EngineConfig(size=64, refine=False, device="cpu", clip_model=tiny_clip_path),
                    encoder=ColourEncoder())
    image, _ = three_region_image(seed=1)
    arr = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    arr = np.array(__import__("PIL.Image", fromlist=["Image"]).fromarray(arr).resize((80, 64)))
    seg = engine.segment(arr, classes=["cat", "sky, clouds", "grass"])
    naming = seg.naming
    assert naming is not None and naming.class_map.shape == seg.labels.shape == (64, 80)
    assert naming.segment_ids == tuple(int(i) for i in np.unique(seg.labels))
    assert set(naming.names) <= {"cat", "sky", "grass"} and all(0 < s <= 1 for s in naming.scores)
    assert "name" in seg.timings
    # the same as naming the result directly with the engine's namer
    res = next(engine.iter_segment([arr], return_image=True))
    direct = engine.namer(["cat", "sky, clouds", "grass"]).name(res.image, res.segmentation.labels)
    assert direct.class_ids == naming.class_ids
    np.testing.assert_array_equal(direct.class_map, naming.class_map)
    assert engine.namer(Vocabulary.from_names(["cat", "sky,clouds", "grass"])) is engine.namer(["cat", "sky, clouds",
                                                                                                 "grass"])
    assert engine.segment(arr).naming is None


def test_cli_segment_classes_writes_class_map_and_names(tiny_clip_path, tiny_sdxl_path, tmp_path, capsys):
    import json

    from PIL import Image

    from diffcut_engine.cli import main

    image, _ = three_region_image(seed=2)
    src = tmp_path / "in.png"
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(src)
    out = tmp_path / "out"
    code = main(["segment", str(src), "-o", str(out), "--model", tiny_sdxl_path, "--size", "64", "--device", "cpu",
                 "--quiet", "--tau", "0.8", "--classes", "cat,sky|clouds,grass", "--clip-model", tiny_clip_path])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    png = np.asarray(Image.open(out / "in_classes.png"))
    assert png.shape[0] == 64 and png.shape[1] > 64 and png.shape[2] == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == ["cat", "sky", "grass"] and summary["clip_model"] == tiny_clip_path
    segs = summary["results"][0]["segments"]
    assert len(segs) >= 1 and all(s["class"] in {"cat", "sky", "grass"} and 0 < s["score"] <= 1 for s in segs)
    assert str(out / "in_classes.png") in summary["results"][0]["outputs"]
    classes_file = tmp_path / "classes.txt"
    classes_file.write_text("cat\nsky,clouds\n")
    code = main(["segment", str(src), "-o", str(out), "--model", tiny_sdxl_path, "--size", "64", "--device", "cpu",
                 "--quiet", "--classes-file", str(classes_file), "--clip-model", tiny_clip_path, "--overwrite"])
    assert code == 0
    assert json.loads((out / "summary.json").read_text())["classes"] == ["cat", "sky"]
    code = main(["segment", str(src), "-o", str(out), "--model", tiny_sdxl_path, "--classes", "a",
                 "--classes-file", str(classes_file)])
    assert code == 2 and "not both" in capsys.readouterr().err


def test_render_class_map_has_legend():
    from diffcut_engine.openvocab.render import render_class_map
    from diffcut_engine.viz import palette

    cmap = np.zeros((20, 30), np.int32)
    cmap[:, 15:] = 2
    out = render_class_map(cmap, ["cat", "sky", "grass"])
    assert out.shape[0] >= 20 and out.shape[1] > 30  # taller than the map only if the legend needs it
    cols = palette(3)
    assert tuple(out[5, 5]) == tuple(cols[0]) and tuple(out[5, 25]) == tuple(cols[2])
    legend = out[:, 30:].reshape(-1, 3)
    assert any((legend == cols[2]).all(1)) and not any((legend == cols[1]).all(1))  # only classes present


# ------------------------------------------------------------------------------------------------------------
# Open-vocabulary evaluation
# ------------------------------------------------------------------------------------------------------------

def torchmetrics_multiclass_jaccard(preds, target, num_classes):
    """A port of torchmetrics' multiclass JaccardIndex (confusion matrix update + ``_jaccard_index_reduce`` with
    average="macro", no ignore index), as the official open-vocabulary evaluation calls it on one image."""
    unique_mapping = (target.view(-1) * num_classes + preds.view(-1)).to(torch.long)
    bins = torch.bincount(unique_mapping, minlength=num_classes ** 2)
    confmat = bins.reshape(num_classes, num_classes).float()
    num = torch.diag(confmat)
    denom = confmat.sum(0) + confmat.sum(1) - num
    jaccard = torch.where(denom > 0, num / torch.where(denom > 0, denom, torch.ones_like(denom)),
                          torch.zeros_like(num))
    weights = torch.ones_like(jaccard)
    weights[confmat.sum(1) + confmat.sum(0) == 0] = 0.0
    return ((weights * jaccard) / weights.sum()).sum(axis=-1)


def test_jaccard_index_matches_torchmetrics_port():
    from diffcut_engine.openvocab.evaluate import jaccard_index

    g = torch.Generator().manual_seed(0)
    for n in (3, 21, 60):
        pred = torch.randint(0, min(n, 5), (32, 32), generator=g)
        gt = torch.randint(0, min(n, 4), (32, 32), generator=g)
        gt[:8] = 0
        ref = float(torchmetrics_multiclass_jaccard(pred, gt, n))
        assert jaccard_index(pred.numpy(), gt.numpy(), n) == pytest.approx(ref, rel=1e-6)
    assert jaccard_index(np.zeros((4, 4)), np.zeros((4, 4)), 21) == 1.0  # only class 0 present
    with pytest.raises(InputError):
        jaccard_index(np.full((2, 2), 21), np.zeros((2, 2)), 21)


def test_evaluate_open_vocab_on_a_miniature_voc(tiny_clip_path, tmp_path):
    import json

    from eval_fixtures import make_dataset
    from toy_encoder import ColourEncoder

    from diffcut_engine.config import EngineConfig
    from diffcut_engine.engine import Engine
    from diffcut_engine.eval.datasets import eval_labels, get_dataset
    from diffcut_engine.openvocab.evaluate import evaluate_open_vocab, jaccard_index

    ds = get_dataset(*make_dataset("voc-d2", tmp_path / "data", n=2, size=(72, 96))[:2])
    engine = Engine(EngineConfig(size=64, device="cpu", clip_model=tiny_clip_path), encoder=ColourEncoder())
    clip = load_clip(tiny_clip_path)
    res = evaluate_open_vocab(ds, engine, out=tmp_path / "ov", progress=False, clip=clip)
    assert res["num_images"] == 2 and not res["failed"]
    assert res["settings"]["pamr_iters"] == 15 and res["settings"]["pamr_dilations"] == [1, 2, 4, 8, 12, 24, 32, 64]
    assert res["settings"]["num_classes"] == 21 and res["settings"]["clip_size"] == 64
    assert res["miou"] == pytest.approx(np.mean([r["jaccard"] for r in res["per_image"]]))
    assert json.loads((tmp_path / "ov" / "results.json").read_text())["miou"] == pytest.approx(res["miou"])
    # image 0 again by hand: centre crop at 64 px, PAMR(15, 1..64), CLIP names among the 21 VOC classes, GT + 1
    ev = Engine(engine.config.replace(resize_mode="center_crop", output_size=(64, 64), pamr_iters=15,
                                      pamr_dilations=(1, 2, 4, 8, 12, 24, 32, 64)), encoder=engine.encoder)
    r = next(ev.iter_segment([ds.samples[0].image], return_image=True))
    from diffcut_engine import images

    namer = SegmentNamer(clip, official_vocabulary("voc"), size=64)
    pred = namer.name(images.resize(r.image, (64, 64)), r.segmentation.labels).class_map
    gt = eval_labels(ds.load_label(ds.samples[0]), r.segmentation.crop_box, 64, 64).astype(np.int64) + 1
    assert set(np.unique(gt)) <= {0, 1, 15}  # background, aeroplane, person
    assert res["per_image"][0]["jaccard"] == pytest.approx(jaccard_index(pred, gt, 21))


def test_cli_eval_open_vocab(tiny_clip_path, tiny_sdxl_path, tmp_path, capsys):
    from eval_fixtures import make_dataset

    from diffcut_engine.cli import main

    _, root, _, _ = make_dataset("voc-d2", tmp_path / "data", n=1, size=(72, 96))
    code = main(["eval", "--dataset", "voc", "--root", str(root), "--open-vocab", "--clip-model", tiny_clip_path,
                 "--model", tiny_sdxl_path, "--size", "64", "--device", "cpu", "--quiet", "--tau", "0.8",
                 "--out", str(tmp_path / "ov.json")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "voc open-vocabulary mIoU (mean per-image Jaccard):" in out and "over 1 images" in out
    assert (tmp_path / "ov.json").is_file()


def test_missing_open_clip_fails_before_the_engine_loads(tmp_path, capsys):
    from diffcut_engine.utils.imports import is_available

    if is_available("open_clip"):
        pytest.skip("open_clip is installed here")
    from diffcut_engine.cli import main

    code = main(["segment", str(tmp_path / "x.png"), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "none"),
                 "--classes", "a,b"])
    err = capsys.readouterr().err
    assert code == 2 and "diffcut-engine[openvocab]" in err and "download.pytorch.org/whl/cpu" in err
    assert "# Engine" not in err


def test_a_clip_path_that_does_not_exist_is_named_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """``--clip-model /no/such/folder`` was passed to transformers as a hub id, after the diffusion model had
    loaded, and failed with "Repo id must use alphanumeric chars"."""
    from PIL import Image

    import diffcut_engine.engine as engine_module
    from diffcut_engine.cli import main
    from diffcut_engine.errors import ModelLoadError

    for path in (str(tmp_path / "nope"), "./no/such/clip", "~/no-such-clip-folder"):
        with pytest.raises(ModelLoadError, match="does not exist"):
            clip_kind(path)
    assert clip_kind("openai/clip-vit-base-patch16") == "transformers"   # an org/name id stays a hub id
    monkeypatch.setattr(engine_module, "Engine", lambda *a, **k: pytest.fail("the model was loaded"))
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(img)
    code = main(["segment", str(img), "-o", str(tmp_path / "out"), "--classes", "a,b", "--clip-model",
                 str(tmp_path / "nope"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: CLIP folder") and "does not exist" in err.splitlines()[0]
