"""The ``diffcut eval`` runner on miniature benchmarks with a fast toy encoder: protocol, resume, several taus."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import median_filter

from diffcut_engine import EngineConfig, InputError
from diffcut_engine import refine as refine_mod
from diffcut_engine.engine import Engine
from diffcut_engine.eval import get_dataset
from diffcut_engine.cli import main
from diffcut_engine.eval.runner import evaluate, format_table, output_paths
from diffcut_engine.images import load_image

from eval_fixtures import OfficialAccumulator, make_dataset
from toy_encoder import ColourEncoder

EVAL = 64


class CountingEncoder(ColourEncoder):
    """The toy encoder; raises KeyboardInterrupt on encoder call number ``stop_at`` (a killed run)."""

    def __init__(self, stop_at=None):
        super().__init__()
        self.stop_at = stop_at

    def encode(self, pixels):
        if self.stop_at is not None and self.calls + 1 == self.stop_at:
            raise KeyboardInterrupt
        return super().encode(pixels)


def make_engine(refine=True, encoder=None, **kw):
    cfg = EngineConfig(size=128, device="cpu", refine=refine, batch_size=2, **kw)
    return Engine(cfg, encoder=encoder or CountingEncoder())


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    key, root, names, _ = make_dataset("voc-devkit", root, n=5, size=(80, 104))
    return get_dataset(key, root)


def by_hand(ds, tau, refine):
    """Score the dataset without the runner: the engine's labels, the official label chain (crop,
    nearest-exact, nearest), the official merge and PAMR, then the official matching code."""
    eng = Engine(EngineConfig(size=128, device="cpu", refine=False, tau=tau, resize_mode="center_crop",
                              output_size=(EVAL, EVAL)), encoder=ColourEncoder())
    acc = OfficialAccumulator(ds.num_classes, merge=False)
    for s in ds:
        seg = eng.segment(str(s.image))
        top, left, h, w = seg.crop_box
        lab = torch.from_numpy(ds.load_label(s)[top:top + h, left:left + w].astype(np.float32))[None, None]
        lab = F.interpolate(F.interpolate(lab, size=(128, 128), mode="nearest-exact"), size=(EVAL, EVAL))
        gt = lab[0, 0].numpy().astype(np.int64)
        pred = seg.labels.astype(np.int64)
        if ds.background_merge:
            from eval_fixtures import official_merge

            p, g = official_merge(pred[None], gt[None], ds.num_classes)
            pred, gt = p[0], g[0]
        if refine:
            view = load_image(s.image).pixels[:, top:top + h, left:left + w]
            img = F.interpolate(F.interpolate(view[None], size=(128, 128), mode="bilinear"), size=(EVAL, EVAL),
                                mode="bilinear")[0]
            t = torch.from_numpy(pred)
            masks = torch.stack([(t == v).float() for v in torch.unique(t)])
            soft = refine_mod.pamr_soft(img, masks, iters=10, dilations=(1, 2, 4, 8))
            pred = median_filter(soft.argmax(0).numpy(), 3).astype(np.int64)
        acc.add(pred, gt)
    return acc


@pytest.mark.parametrize("fmt, refine", [("voc-devkit", True), ("voc-devkit", False), ("ade20k", True)])
def test_runner_equals_the_protocol_by_hand(tmp_path, voc, fmt, refine):
    ds = voc if fmt == "voc-devkit" else get_dataset(*make_dataset(fmt, tmp_path, n=3)[:2])
    res = evaluate(ds, make_engine(refine=refine), eval_size=EVAL, progress=False)
    ref = by_hand(ds, 0.5, refine)
    r = res["results"][0]
    assert r["tau"] == 0.5 and res["num_images"] == len(ds) and not res["failed"]
    assert r["miou"] == pytest.approx(ref.miou(), abs=1e-12)
    assert r["pixel_accuracy"] == pytest.approx(ref.accuracy(), abs=1e-12)
    assert [c["tp"] for c in r["per_class"]] == ref.tp.astype(int).tolist()
    assert [c["fp"] for c in r["per_class"]] == ref.fp.astype(int).tolist()
    assert 0.3 < r["miou"] <= 1  # the colour regions are found


def test_resume_after_a_kill_gives_identical_numbers(tmp_path, voc):
    full = evaluate(voc, make_engine(), eval_size=EVAL, out=tmp_path / "full", progress=False)
    out = tmp_path / "resumed.json"
    # killed during the second encoder batch: images 0 and 1 are finished and cached
    with pytest.raises(KeyboardInterrupt):
        evaluate(voc, make_engine(encoder=CountingEncoder(stop_at=2)), eval_size=EVAL, out=out, progress=False)
    cache = output_paths(out)["cache"]
    assert len(cache.read_text().splitlines()) == 1 + 2
    with open(cache, "a") as fh:              # and the process died in the middle of writing a line
        fh.write('{"index": 2, "name": "2007_0000')
    enc = CountingEncoder()
    resumed = evaluate(voc, make_engine(encoder=enc), eval_size=EVAL, out=out, progress=False)
    assert resumed["images_this_run"] == 3 and enc.calls == 2
    assert resumed["results"] == full["results"]
    assert json.loads(out.read_text())["results"] == full["results"]
    # a third run finds everything cached
    enc = CountingEncoder()
    again = evaluate(voc, make_engine(encoder=enc), eval_size=EVAL, out=out, progress=False)
    assert enc.calls == 0 and again["images_this_run"] == 0 and again["results"] == full["results"]


def test_limit_then_resume_to_the_full_set(tmp_path, voc):
    full = evaluate(voc, make_engine(refine=False), eval_size=EVAL, progress=False)
    out = tmp_path / "out"
    part = evaluate(voc, make_engine(refine=False), eval_size=EVAL, out=out, limit=2, progress=False)
    assert part["num_images"] == 2
    rest = evaluate(voc, make_engine(refine=False), eval_size=EVAL, out=out, progress=False)
    assert rest["images_this_run"] == 3 and rest["results"] == full["results"]


def test_other_settings_do_not_mix_with_the_cache(tmp_path, voc):
    out = tmp_path / "out"
    evaluate(voc, make_engine(refine=False), eval_size=EVAL, out=out, limit=1, progress=False)
    with pytest.raises(InputError, match="taus"):
        evaluate(voc, make_engine(refine=False), taus=0.3, eval_size=EVAL, out=out, limit=1, progress=False)
    with pytest.raises(InputError, match="refine"):
        evaluate(voc, make_engine(refine=True), eval_size=EVAL, out=out, limit=1, progress=False)
    res = evaluate(voc, make_engine(refine=False), taus=0.3, eval_size=EVAL, out=out, limit=1, restart=True,
                   progress=False)
    assert res["images_this_run"] == 1
    output_paths(out)["cache"].write_text("garbage\n")
    with pytest.raises(InputError, match="not a diffcut eval cache"):
        evaluate(voc, make_engine(refine=False), eval_size=EVAL, out=out, progress=False)


def test_several_taus_from_one_tree_per_image(tmp_path, voc):
    enc = CountingEncoder()
    multi = evaluate(voc, make_engine(encoder=enc), taus=[0.5, 0.1, 0.25], eval_size=EVAL, out=tmp_path / "m",
                     progress=False)
    assert enc.calls == 3  # 5 images in batches of 2: one encoder pass per image for all taus
    assert [r["tau"] for r in multi["results"]] == [0.1, 0.25, 0.5]
    segs = [r["mean_segments"] for r in multi["results"]]
    assert segs == sorted(segs) and segs[0] < segs[-1]
    for r in multi["results"][::2]:
        single = evaluate(voc, make_engine(), taus=r["tau"], eval_size=EVAL, progress=False)
        assert single["results"] == [r]
    files = multi["files"]
    assert sorted(files["confusion"]) == ["0.1", "0.25", "0.5"]
    for p in files["confusion"].values():
        assert Image.open(p).size[0] > 100
    strips = sorted((tmp_path / "m" / "results_overlays").iterdir())
    assert len(strips) == 4
    # image | ground truth | one panel per tau, each EVAL px scaled by 2, with 2 px separators
    assert Image.open(strips[0]).size == (2 * (5 * EVAL + 4 * 2), 2 * EVAL)


def test_taus_that_differ_beyond_six_digits_keep_their_own_records(voc):
    """Records were keyed f"{tau:g}": two taus equal in 6 digits shared one record, the last one's numbers
    reported for both."""
    multi = evaluate(voc, make_engine(), taus=[0.25, 0.2500001], eval_size=EVAL, progress=False)
    assert [r["tau"] for r in multi["results"]] == [0.25, 0.2500001]
    for r in multi["results"]:
        assert evaluate(voc, make_engine(), taus=r["tau"], eval_size=EVAL, progress=False)["results"] == [r]


def test_results_json_and_table(tmp_path, voc):
    res = evaluate(voc, make_engine(), eval_size=EVAL, out=tmp_path / "r.json", overlays=1, progress=False)
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["results"] == res["results"] and saved["dataset"] == "voc"
    assert saved["published_miou_percent"] == {"DiffCut": 65.2, "DiffSeg": 49.8}
    row = saved["results"][0]
    assert len(row["per_class"]) == 21 and row["per_class"][-1]["class"] == "background"
    assert np.asarray(row["confusion"]).shape == (21, 22)
    assert np.asarray(row["confusion"]).sum() == sum(c["tp"] + c["fn"] for c in row["per_class"])
    assert (tmp_path / "r.cache.jsonl").is_file() and (tmp_path / "r_confusion_tau0.5.png").is_file()
    assert len(list((tmp_path / "r_overlays").iterdir())) == 1
    text = format_table(res)
    assert "published mIoU: DiffCut 65.2" in text and f"mIoU {100 * row['miou']:.2f}" in text


def test_bad_image_is_reported_and_skipped(tmp_path):
    key, root, names, _ = make_dataset("cityscapes", tmp_path, n=3)
    ds = get_dataset(key, root)
    ds[1].image.write_bytes(b"broken")
    res = evaluate(ds, make_engine(refine=False), eval_size=EVAL, progress=False)
    assert [f["name"] for f in res["failed"]] == [names[1]] and res["results"][0]["num_scored"] == 2


@pytest.mark.parametrize("fmt", ["voc-d2", "context-devkit", "context-d2", "coco", "cityscapes", "ade20k"])
def test_every_dataset_format_end_to_end(tmp_path, fmt):
    key, root, names, _ = make_dataset(fmt, tmp_path, n=2)
    for name in ([key, "coco-object"] if fmt == "coco" else [key]):
        ds = get_dataset(name, root)
        res = evaluate(ds, make_engine(), eval_size=EVAL, out=tmp_path / name, progress=False)
        r = res["results"][0]
        assert res["num_images"] == 2 and not res["failed"]
        assert len(r["per_class"]) == ds.num_classes and 0 < r["miou"] <= 1 and 0 < r["pixel_accuracy"] <= 1


def test_bad_arguments(voc):
    eng = make_engine()
    with pytest.raises(InputError, match="unknown method"):
        evaluate(voc, eng, method="nope", progress=False)
    with pytest.raises(InputError):
        evaluate(voc, eng, fp_counting="clean", progress=False)
    with pytest.raises(InputError):
        evaluate(voc, eng, limit=0, progress=False)
    with pytest.raises(InputError):
        evaluate(voc, eng, taus=[0.5, -1], progress=False)


def test_cli_end_to_end(tmp_path, tiny_sdxl_path, capsys):
    key, root, names, _ = make_dataset("voc-d2", tmp_path, n=3)
    with pytest.raises(SystemExit):
        main(["eval", "--dataset", "voc", "--root", str(root), "--out", "x", "--method", "nope"])
    out = tmp_path / "run"
    argv = ["eval", "--dataset", "VOC20", "--root", str(root), "--out", str(out), "--model", tiny_sdxl_path,
            "--size", "64", "--eval-size", "32", "--device", "cpu", "--tau", "0.5,0.8", "--quiet", "--limit", "2"]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "PASCAL VOC 2012: 2 images" in stdout and "tau 0.8: mIoU" in stdout
    saved = json.loads((out / "results.json").read_text())
    assert [r["tau"] for r in saved["results"]] == [0.5, 0.8] and saved["settings"]["backbone"] == "diffusion"
    assert main(argv[:-2] + ["--json"]) == 0         # resume to all 3 images, JSON on stdout
    printed = json.loads(capsys.readouterr().out)
    assert printed["num_images"] == 3 and printed["images_this_run"] == 1


def test_table_names_the_method_when_tau_is_not_used(tmp_path, voc):
    """AutoSC and the random-walk NCut's automatic rules ignore tau: the table said 'tau 0.5: mIoU ...' for them
    (issue 18's complaint about `segment --method rwncut`, in `eval`)."""
    for method, rw, label in (("autosc", None, "method autosc:"), ("rwncut", None, "method rwncut:"),
                              ("rwncut", {"threshold": "constant"}, "tau 0.5:"), ("diffcut", None, "tau 0.5:")):
        eng = make_engine(refine=False, method=method, rwncut=rw)
        text = format_table(evaluate(voc, eng, eval_size=32, limit=1, progress=False, method=method))
        assert label in text and ("tau" in text) == (label.startswith("tau")), text


def test_cli_out_that_cannot_be_written_is_one_line_before_the_model_loads(tmp_path, voc, capsys, monkeypatch):
    import diffcut_engine.engine as engine_module

    monkeypatch.setattr(engine_module, "Engine", lambda *a, **k: pytest.fail("the model was loaded"))
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    for out in (afile, afile / "run", afile / "r.json"):
        code = main(["eval", "--dataset", "voc", "--root", str(voc.root), "--out", str(out), "-q"])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and err.startswith("error: --out")
    with pytest.raises(SystemExit):
        main(["eval", "--dataset", "voc", "--root", str(voc.root), "--out", str(tmp_path / "o"), "--limit", "0"])
    assert afile.read_text() == "x"


def test_an_image_with_an_exif_orientation_is_scored_against_its_turned_label(tmp_path):
    """The image is read upright (its EXIF orientation applied) and its label, drawn on the stored pixels, takes
    the same turn: a stored-sideways JPEG with orientation 6 was refused ("label is 104x80 but the image is
    80x104") or, if square, scored against an unturned label."""
    key, root, names, _ = make_dataset("voc-devkit", tmp_path / "a", n=2, size=(80, 104))
    upright = evaluate(get_dataset(key, root), make_engine(refine=False), eval_size=EVAL, progress=False)
    base = root / "VOCdevkit" / "VOC2012"
    image, label = base / "JPEGImages" / f"{names[0]}.jpg", base / "SegmentationClass" / f"{names[0]}.png"
    with Image.open(image) as im:
        pixels = np.asarray(im.convert("RGB"))
    with Image.open(label) as lab:
        palette, ids = lab.getpalette(), np.asarray(lab)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: store the pixels turned 90 degrees the other way
    Image.fromarray(np.ascontiguousarray(np.rot90(pixels))).save(image, quality=100, exif=exif)
    turned = Image.fromarray(np.ascontiguousarray(np.rot90(ids)), mode="P")
    turned.putpalette(palette)
    turned.save(label)
    sideways = evaluate(get_dataset(key, root), make_engine(refine=False), eval_size=EVAL, progress=False)
    assert sideways["failed"] == upright["failed"] == []
    assert abs(sideways["results"][0]["miou"] - upright["results"][0]["miou"]) < 0.02


def test_tau_names_round_trip():
    from diffcut_engine.graph.validation import tau_name

    rng = np.random.default_rng(0)
    taus = np.concatenate([rng.uniform(0, 1, 200), [0.5, 0.3, 0.08, 1e-8, 0.0340443, 0.03404432]])
    assert all(float(tau_name(t)) == float(t) for t in taus)
    assert len({tau_name(t) for t in taus}) == len(set(taus.tolist()))
    assert tau_name(0.5) == "0.5" and tau_name(np.float32(0.25)) == "0.25"


def test_cli_eval_takes_the_refine_flags_of_the_other_commands(tmp_path, monkeypatch):
    """`diffcut eval --refine-iters 5` exited 2 ("unrecognized arguments") while segment, bench, video and batch take
    --refine-iters/--refine-dilations/--refine-backend (REFINE.md calls --pamr-* the old spelling); the values reach
    the engine's configuration."""
    import diffcut_engine.cli.eval as cli_eval
    from diffcut_engine.cli import build_parser

    parser = build_parser()
    base = ["eval", "--dataset", "voc", "--root", str(tmp_path), "--out", str(tmp_path / "o")]
    args = parser.parse_args(base + ["--refine-iters", "5", "--refine-dilations", "1,2", "--refine-backend", "torch"])
    assert (args.pamr_iters, tuple(args.pamr_dilations), args.refine_backend) == (5, (1, 2), "torch")
    old = parser.parse_args(base + ["--pamr-iters", "7", "--pamr-dilations", "1,3"])
    assert (old.pamr_iters, tuple(old.pamr_dilations), old.refine_backend) == (7, (1, 3), "auto")
    seen = {}

    def stop(config):
        seen["config"] = config
        raise RuntimeError("stop")

    import diffcut_engine.engine as engine_module
    import diffcut_engine.eval.datasets as datasets_module

    monkeypatch.setattr(datasets_module, "get_dataset", lambda *a, **k: None)
    monkeypatch.setattr(engine_module, "Engine", stop)
    with pytest.raises(RuntimeError, match="stop"):
        cli_eval.cmd_eval(args)
    assert (seen["config"].pamr_iters, seen["config"].pamr_dilations, seen["config"].refine_backend) == \
        (5, (1, 2), "torch")
