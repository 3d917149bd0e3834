"""Issue 18: fast honest errors, granularity by segment count, per-segment outputs."""

import json
import logging
import warnings

import numpy as np
import pytest
from PIL import Image

from diffcut_engine import EngineConfig, InputError, ModelLoadError
from diffcut_engine import granularity, viz
from diffcut_engine.cli import main, quiet_libraries
from diffcut_engine.engine import Engine, warn_slow_dtype
from diffcut_engine.graph import NCutNode, NCutTree
from diffcut_engine.result import rle_decode, rle_encode

from toy_encoder import ColourEncoder


def block_image(seed=2, rows=3, cols=4):
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 255, size=(rows, cols, 3)).astype(np.uint8)
    return np.kron(blocks, np.ones((32, 32, 1), dtype=np.uint8))


@pytest.fixture
def engine():
    return Engine(EngineConfig(size=(96, 128), tau=0.5, device="cpu"), encoder=ColourEncoder())


def run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------------------------
# segments=K
# ------------------------------------------------------------------------------------------------------------

def toy_tree(tau_max=1.0):
    """root (NCut 0.2) -> one side split again at 0.1, the other a leaf: 1 segment up to tau 0.2, then 3."""
    root = NCutNode(np.arange(4), 0, value=0.2)
    root.one, root.zero = NCutNode(np.array([0, 1]), 1, value=0.1), NCutNode(np.array([2, 3]), 1, value=1.5)
    root.one.one, root.one.zero = NCutNode(np.array([0]), 2), NCutNode(np.array([1]), 2)
    return NCutTree(root, (4,), tau_max, "clean")


def test_tau_for_segments_ties_go_to_the_coarser_cut():
    tree = toy_tree()
    # the child's split (0.1) is only reached once its parent's (0.2) is accepted
    np.testing.assert_array_equal(granularity.split_path_maxima(tree), [0.2, 0.2])
    for k, expect in ((1, 1), (2, 1), (3, 3), (9, 3)):  # 2 is as close to 1 as to 3: the coarser wins
        tau, n = granularity.tau_for_segments(tree, k)
        assert n == expect and tree.num_segments(tau) == expect
    tau, _ = granularity.tau_for_segments(tree, 3)
    assert 0.2 < tau <= 1.0
    with pytest.raises(InputError, match="segments"):
        granularity.tau_for_segments(tree, 0)


def test_segments_picks_the_closest_count_from_the_tree(engine):
    img = block_image()
    full = engine.segment(img, tau=granularity.TAU_CEILING, return_tree=True).tree
    values = np.unique(full.split_values())  # the count can change only at these taus
    taus = np.concatenate([[values[0] / 2], (values[:-1] + values[1:]) / 2, [granularity.TAU_CEILING]])
    reachable = sorted({full.num_segments(t) for t in taus})
    for k in (1, 2, 4, 7, 12, 40):
        seg = engine.segment(img, segments=k)
        best = min(reachable, key=lambda n: (abs(n - k), n))
        assert seg.num_segments == best, (k, reachable)
        # the result is exactly a plain run at the tau it reports
        np.testing.assert_array_equal(engine.segment(img, tau=seg.tau).labels, seg.labels)
    # the engine's tau (0.5) gives fewer segments than 12: the tree was deepened for it
    k12 = min(reachable, key=lambda n: (abs(n - 12), n))
    assert engine.segment(img).num_segments < k12 == engine.segment(img, segments=12).num_segments
    with pytest.raises(InputError, match="not both"):
        engine.segment(img, tau=0.3, segments=3)
    with pytest.raises(InputError, match="segments"):
        engine.segment(img, segments=0)


def test_one_call_api_takes_segments(monkeypatch):
    import diffcut_engine
    from diffcut_engine import engine as engine_mod

    monkeypatch.setattr(engine_mod, "load_encoder", lambda config: ColourEncoder())
    seg = diffcut_engine.segment(block_image(), size="128x96", device="cpu", segments=3)
    assert seg.num_segments == 3
    engine_mod._ENGINE_CACHE.clear()


# ------------------------------------------------------------------------------------------------------------
# at_tau, errors="raise", fp16 on the CPU, read-only arrays, the engine's description
# ------------------------------------------------------------------------------------------------------------

def test_at_tau_takes_what_segment_takes(engine, tmp_path):
    img = block_image(seed=3)
    path = tmp_path / "blocks.png"
    Image.fromarray(img).save(path)
    kept = engine.segment(str(path), tau=0.1, tree_tau_max=0.9)  # no return_features: encoded again
    with_feats = engine.segment(img, tau=0.1, tree_tau_max=0.9, return_features=True)
    readonly = img.copy()
    readonly.flags.writeable = False
    for source in (str(path), path, Image.open(path), img, readonly):
        for seg in (kept, with_feats):
            other = engine.at_tau(seg, 0.6, source)
            np.testing.assert_array_equal(other.labels, engine.segment(img, tau=0.6).labels)
    with pytest.raises(InputError, match="return_tree"):
        engine.at_tau(engine.segment(img), 0.3, img)
    with pytest.raises(InputError, match="same image"):
        engine.at_tau(kept, 0.3, img[:64])


def test_errors_raise_does_not_log_skipping(engine, caplog):
    from diffcut_engine import BatchError

    bad = np.full((8, 8, 3), np.nan, np.float32)
    with caplog.at_level(logging.WARNING, logger="diffcut_engine"):
        with pytest.raises(BatchError):
            engine.segment([block_image(), bad], errors="raise")
    assert "skipping" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="diffcut_engine"):
        out = engine.segment([block_image(), bad], errors="skip")
    assert out[1] is None and "skipping <ndarray 1>" in caplog.text


def test_fp16_on_the_cpu_warns_and_suggests_bf16(caplog, monkeypatch):
    from diffcut_engine import engine as engine_mod

    with caplog.at_level(logging.WARNING, logger="diffcut_engine"):
        warn_slow_dtype(EngineConfig(dtype="fp32", device="cpu"))
        warn_slow_dtype(EngineConfig(dtype="bf16", device="cpu"))
    assert caplog.text == ""
    monkeypatch.setattr(engine_mod, "load_encoder", lambda config: ColourEncoder())
    with caplog.at_level(logging.WARNING, logger="diffcut_engine"):
        Engine(EngineConfig(dtype="fp16", device="cpu", size=64))
    assert "fp16 on the CPU" in caplog.text and "bf16" in caplog.text


def test_read_only_array_input_gives_no_torch_warning(engine):
    img = np.asarray(Image.fromarray(block_image()))
    img.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        seg = engine.segment(img)
    assert seg.labels.shape == img.shape[:2]


def test_engine_repr_size_is_w_by_h_and_rwncut_shows_no_tau():
    enc = ColourEncoder()
    e = Engine(EngineConfig(size="128x96", tau=0.3, device="cpu"), encoder=enc)
    assert "size=128x96" in repr(e) and "tau=0.3" in repr(e) and e.uses_tau
    rw = Engine(EngineConfig(size="128x96", device="cpu", method="rwncut"), encoder=enc)
    assert "tau" not in repr(rw).replace("rwncut", "") and not rw.uses_tau
    assert rw.segment(block_image()).num_segments >= 1
    with pytest.raises(InputError, match="rwncut"):
        rw.segment(block_image(), segments=3)


# ------------------------------------------------------------------------------------------------------------
# Per-segment outputs: COCO RLE, save, plot, overlay styles
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (32, 17)])
def test_rle_round_trip_and_pycocotools_agree(shape):
    rng = np.random.default_rng(shape[0])
    masks = [rng.random(shape) > 0.5, np.zeros(shape, bool), np.ones(shape, bool)]
    for mask in masks:
        rle = rle_encode(mask)
        assert rle["size"] == list(shape)
        np.testing.assert_array_equal(rle_decode(rle), mask)
    cm = pytest.importorskip("pycocotools.mask")
    for mask in masks:
        ref = cm.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert rle_encode(mask)["counts"] == ref["counts"].decode()


def test_to_coco_masks_boxes_and_taus(engine):
    img = block_image(seed=5)
    seg = engine.segment(img, tau=0.6, return_tree=True)
    coco = seg.to_coco(image_id=7)
    assert coco["image"]["id"] == 7 and coco["image"]["height"] == 96 and coco["tau"] == 0.6
    anns = coco["annotations"]
    assert sum(a["area"] for a in anns) == seg.labels.size
    assert sorted(a["id"] for a in anns) == sorted(np.unique(seg.labels).tolist())
    tree = seg.tree
    for a in anns:
        mask = rle_decode(a["segmentation"])
        np.testing.assert_array_equal(mask, seg.labels == a["id"])
        x, y, w, h = a["bbox"]
        ys, xs = np.nonzero(mask)
        assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())
        # the segment's grid region is one segment of every cut in (tau_appeared, tau_split]
        region = seg.grid_labels == a["id"]
        hi = seg.tau if a["tau_split"] is None else min(a["tau_split"], tree.tau_max)
        for t in (np.nextafter(a["tau_appeared"], 1.0), hi):
            cut = tree.cut(t)
            assert np.unique(cut[region]).size == 1 and (cut == cut[region][0]).sum() == region.sum()
        if a["tau_appeared"] > 0:  # just below it, the segment is part of a larger one
            cut = tree.cut(a["tau_appeared"])
            assert (cut == cut[region][0]).sum() > region.sum()
    # without a kept tree the taus are unknown, the masks the same
    plain = engine.segment(img, tau=0.6).to_coco()
    assert all(a["tau_appeared"] is None for a in plain["annotations"])
    assert [a["segmentation"] for a in plain["annotations"]] == [a["segmentation"] for a in anns]


def test_save_by_extension(engine, tmp_path):
    seg = engine.segment(block_image(), tau=0.6)
    seg.save(tmp_path / "a.png")
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "a.png")), seg.labels)
    seg.save(tmp_path / "a.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), seg.labels)
    seg.save(tmp_path / "a.json")
    assert json.loads((tmp_path / "a.json").read_text())["num_segments"] == seg.num_segments
    with pytest.raises(InputError, match=".png"):
        seg.save(tmp_path / "a.bmp")
    # a missing parent folder is created; a path under a file or onto a folder is one InputError naming it
    assert seg.save(tmp_path / "new" / "deeper" / "b.npy") == str(tmp_path / "new" / "deeper" / "b.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "new" / "deeper" / "b.npy"), seg.labels)
    for bad in (tmp_path / "a.npy" / "c.png", tmp_path / "new.json"):
        if bad.suffix == ".json":
            bad.mkdir()
        with pytest.raises(InputError, match="cannot write") as err:
            seg.save(bad)
        assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_plot_with_and_without_matplotlib(engine, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = block_image()
    seg = engine.segment(img, tau=0.6)
    ax = seg.plot()
    assert ax.get_images()[0].get_array().shape == (96, 128, 3)
    ax = seg.plot(img, style="side-by-side")
    assert ax.get_images()[0].get_array().shape[1] > 2 * 128 and "segments" in ax.get_title()
    plt.close("all")
    from diffcut_engine import BackendUnavailableError
    from diffcut_engine.utils import imports

    monkeypatch.setattr(imports, "is_available", lambda name: name != "matplotlib")
    with pytest.raises(BackendUnavailableError, match=r"diffcut-engine\[plot\]"):
        seg.plot()


def test_overlay_styles():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (20, 30, 3)).astype(np.uint8)
    labels = np.zeros((20, 30), np.int32)
    labels[:, 15:] = 1
    blend = viz.render(image, labels, "blend", opacity=0.5)
    np.testing.assert_array_equal(blend, viz.overlay(image, labels, opacity=0.5))
    contour = viz.render(image, labels, "contour", opacity=1.0)
    np.testing.assert_array_equal(contour[:, :10], image[:, :10])  # away from the edge: the image itself
    assert (contour[:, 13:17] != image[:, 13:17]).any()
    sbs = viz.render(image, labels, "side-by-side")
    assert sbs.shape == (20, 64, 3)
    np.testing.assert_array_equal(sbs[:, :30], image)
    with pytest.raises(ValueError, match="style"):
        viz.render(image, labels, "sparkles")
    # bad arguments are the engine's InputError (a ValueError), as everywhere else
    for args, kw, match in (((image, labels, "sparkles"), {}, "style"), ((image, labels), {"opacity": 2.0}, "opacity"),
                            ((image, labels), {"opacity": float("nan")}, "opacity"),
                            ((image, labels[:10]), {}, "differ in size")):
        with pytest.raises(InputError, match=match):
            viz.render(*args, **kw)


# ------------------------------------------------------------------------------------------------------------
# Loading a model: fail fast, in one line
# ------------------------------------------------------------------------------------------------------------

def test_offline_unknown_model_fails_in_one_line():
    from diffcut_engine.encoders.loading import check_hub_model

    with pytest.raises(ModelLoadError) as info:
        check_hub_model("some-org/unknown-model-id")
    msg = str(info.value)
    assert "\n" not in msg and "not in the local Hugging Face cache" in msg and "folder" in msg
    with pytest.raises(ModelLoadError, match="valid Hugging Face hub id"):
        check_hub_model("not a valid id")


def test_unreachable_hub_and_unknown_id_online(monkeypatch):
    from huggingface_hub import HfApi, constants, errors

    from diffcut_engine.encoders.loading import check_hub_model

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(ModelLoadError, match="cannot reach the Hugging Face hub") as info:
        check_hub_model("some-org/unknown-model-id", timeout=5)
    assert "\n" not in str(info.value)

    def not_found(self, repo_id, **kw):
        exc = errors.RepositoryNotFoundError.__new__(errors.RepositoryNotFoundError)
        Exception.__init__(exc, "404")
        raise exc

    monkeypatch.setattr(HfApi, "model_info", not_found)
    with pytest.raises(ModelLoadError, match="was not found on the Hugging Face hub"):
        check_hub_model("some-org/unknown-model-id")


# ------------------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------------------

def test_misspelled_options_get_a_suggestion_not_the_usage(capsys):
    code, _, err = run(["segment", "x.png", "-o", "out", "--tua", "0.3"], capsys)
    assert code == 2 and "did you mean --tau" in err and len(err.strip().splitlines()) <= 2
    code, _, err = run(["segmnet", "x.png"], capsys)
    assert code == 2 and "did you mean segment?" in err
    code, _, err = run(["segment", "x.png", "-o", "out", "--backbone", "efficientnet"], capsys)
    assert code == 2 and "did you mean efficientnet-lite0?" in err and len(err.strip().splitlines()) <= 2


def test_missing_inputs_and_unknown_model_fail_before_loading(tmp_path, capsys):
    code, _, err = run(["segment", str(tmp_path / "nope.png"), "-o", str(tmp_path / "o"), "--model",
                        "some-org/unknown-model-id", "-q"], capsys)
    assert code == 2 and "no input image exists" in err and "nope.png: file not found" in err
    Image.fromarray(block_image()).save(tmp_path / "a.png")
    code, _, err = run(["segment", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--model",
                        "some-org/unknown-model-id", "-q"], capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "unknown-model-id" in errors[0]
    assert "model_index.json" not in err and "Traceback" not in err


def test_quiet_silences_library_warnings_and_logs():
    lg = logging.getLogger("diffusers")
    before = lg.level
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_libraries():
            assert lg.level == logging.ERROR
            warnings.warn_explicit("loading bar noise", UserWarning, "x.py", 1, module="diffusers.pipelines")
            warnings.warn_explicit("ours", UserWarning, "x.py", 1, module="diffcut_engine.engine")
    assert [str(w.message) for w in caught] == ["ours"]
    assert lg.level == before


def test_error_lines_go_through_tqdm_write(monkeypatch, capsys):
    from tqdm.auto import tqdm

    from diffcut_engine.utils import progress

    monkeypatch.delenv("DIFFCUT_NO_PROGRESS", raising=False)
    seen = []
    monkeypatch.setattr(tqdm, "write", classmethod(lambda cls, s, file=None, **kw: seen.append(s)))
    progress.write_line("error: bad.jpg: cannot decode", progress=True)
    assert seen == ["error: bad.jpg: cannot decode"]
    progress.write_line("plain", progress=False)
    assert "plain" in capsys.readouterr().err and seen == ["error: bad.jpg: cannot decode"]


def test_header_and_lines_state_the_taus_really_used():
    from types import SimpleNamespace

    from diffcut_engine.cli.segment import result_line, run_header

    enc = ColourEncoder()
    e = Engine(EngineConfig(size="128x96", tau=0.3, device="cpu"), encoder=enc)
    rw = Engine(EngineConfig(size="128x96", device="cpu", method="rwncut"), encoder=enc)
    head, fields = run_header(e, SimpleNamespace(segments=None, taus=(0.2, 0.5)))
    assert "taus 0.2,0.5" in head and fields == {"taus": [0.2, 0.5]}
    head, fields = run_header(rw, SimpleNamespace(segments=None, taus=None))
    assert fields == {"tau": None} and "size=128x96" in head
    seg = rw.segment(block_image())
    assert "tau" not in result_line("a.png", seg, rw, ["a_labels.png"])
    one = e.segment(block_image(), tau=1e-4)
    assert one.num_segments == 1 and "a single segment" in result_line("a.png", one, e, ["f"])


def test_cli_segments_masks_overlay_recursive(tmp_path, tiny_sdxl_path, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(block_image(seed=1)).save(src / "a.png")
    Image.fromarray(block_image(seed=4)).save(src / "sub" / "b.png")
    out = tmp_path / "out"
    common = ["--model", tiny_sdxl_path, "--size", "128x96", "--device", "cpu", "-q"]
    code, stdout, err = run(["segment", str(src), "-o", str(out), "--recursive", "--segments", "2",
                             "--format", "labels,masks", "--overlay", "side-by-side", *common], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.glob("*_masks.json")) == ["a_masks.json", "b_masks.json"]
    coco = json.loads((out / "a_masks.json").read_text())
    labels = np.array(Image.open(out / "a_labels.png"))
    assert sum(a["area"] for a in coco["annotations"]) == labels.size
    assert all(a["tau_appeared"] is not None for a in coco["annotations"])
    for a in coco["annotations"]:
        np.testing.assert_array_equal(rle_decode(a["segmentation"]), labels == a["id"])
    assert Image.open(out / "a_overlay.png").size == (2 * 128 + 4, 96)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["segments"] == 2 and summary["size"] == "128x96" and "tau" not in summary
    assert stdout.count("(asked 2)") == 2
    # without --recursive the sub-folder is not searched; --segments excludes --taus
    code, stdout, _ = run(["segment", str(src), "-o", str(tmp_path / "o2"), "--overlay", "none", *common], capsys)
    assert code == 0 and len(stdout.strip().splitlines()) == 1 and not list((tmp_path / "o2").glob("*_overlay.png"))
    code, _, err = run(["segment", str(src), "-o", str(out), "--segments", "3", "--taus", "0.2,0.4", *common],
                       capsys)
    assert code == 2 and "--segments" in err


# ------------------------------------------------------------------------------------------------------------
# diffcut bench: a real photo by default, rows that say how they add up
# ------------------------------------------------------------------------------------------------------------

def test_bench_defaults_to_a_photo_and_explains_its_rows():
    pytest.importorskip("skimage")
    from diffcut_engine.bench import default_image, format_report, run_bench

    photo, source = default_image()
    assert photo.shape == (400, 600, 3) and "coffee" in source
    small, _ = default_image((60, 90))
    assert small.shape == (60, 90, 3)
    engine = Engine(EngineConfig(size=64, tau=0.5, device="cpu", pamr_iters=1), encoder=ColourEncoder())
    report = run_bench(engine, iters=1, warmup=0, input_size="90x60")
    assert "coffee" in report["config"]["input"] and report["config"]["input_size"] == [60, 90]
    text = format_report(report)
    assert "= preprocess + encoder + graph + assign + refine" in text and "part of graph" in text
    lines = text.splitlines()
    graph_row = next(i for i, line in enumerate(lines) if line.startswith("graph "))
    assert lines[graph_row + 1].startswith("  affinity") and lines[graph_row + 2].startswith("  ncut")


@pytest.mark.parametrize("method", ["autosc", "rwncut"])
def test_cli_masks_for_methods_without_a_tree(tmp_path, capsys, monkeypatch, method):
    """``--format masks`` asked the engine for the NCut tree (for each segment's tau range), which AutoSC and the
    random-walk NCut do not build: the run stopped with 'return_tree ... are for method=diffcut'. Their masks are
    written, with no tau range."""
    from diffcut_engine import engine as engine_mod

    monkeypatch.setattr(engine_mod, "load_encoder", lambda config: ColourEncoder())
    img = tmp_path / "blocks.png"
    Image.fromarray(block_image()).save(img)
    out = tmp_path / "out"
    code = main(["segment", str(img), "-o", str(out), "--size", "128x96", "--device", "cpu", "--method", method,
                 "--format", "labels,masks", "-q"])
    assert code == 0, capsys.readouterr().err
    coco = json.loads((out / "blocks_masks.json").read_text())
    labels = np.array(Image.open(out / "blocks_labels.png"))
    assert sorted(a["id"] for a in coco["annotations"]) == np.unique(labels).tolist()
    assert all(a["tau_appeared"] is None and a["tau_split"] is None for a in coco["annotations"])


@pytest.mark.parametrize("option", [["--taus", "0.3,0.5"], ["--segments", "3"]])
def test_cli_tree_options_of_other_methods_fail_before_the_model_loads(tmp_path, capsys, monkeypatch, option):
    from diffcut_engine import engine as engine_mod

    monkeypatch.setattr(engine_mod, "load_encoder", lambda config: pytest.fail("the model was loaded"))
    img = tmp_path / "blocks.png"
    Image.fromarray(block_image()).save(img)
    code = main(["segment", str(img), "-o", str(tmp_path / "out"), "--method", "autosc", "-q", *option])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {option[0]} cuts the NCut tree") and "Traceback" not in err


def test_quiet_hides_the_pipeline_loading_bar_in_a_fresh_process(tmp_path, tiny_sdxl_path):
    """diffusers is imported only when the model loads, after --quiet set the libraries' verbosity, so its
    "Loading pipeline components" bar still showed in every real run (the in-process tests had imported it)."""
    import subprocess
    import sys
    from pathlib import Path

    img = tmp_path / "a.png"
    Image.fromarray(block_image()).save(img)
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-m", "diffcut_engine", "segment", str(img), "-o", str(tmp_path / "o"),
                          "--model", tiny_sdxl_path, "--size", "64", "--device", "cpu", "--refine", "none", "-q"],
                         capture_output=True, text=True, timeout=120, cwd=str(root))
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Loading pipeline components" not in run.stderr and "it/s]" not in run.stderr, run.stderr[-2000:]


def test_every_model_command_takes_quiet():
    """``diffcut export -q`` was refused ('unrecognized argument'), though export loads the pipeline too."""
    from diffcut_engine.cli import build_parser

    parser = build_parser()
    for name in ("segment", "video", "bench", "eval", "export", "batch"):
        assert {"--quiet", "-q", "--debug"} <= set(parser.commands[name].option_strings()), name


def test_to_coco_takes_a_numpy_image_id(engine):
    """``json.dumps(seg.to_coco(image_id=np.int64(3)))`` (ids from a numpy array of a dataset) was a TypeError."""
    coco = engine.segment(block_image(), tau=0.6).to_coco(image_id=np.int64(3))
    assert json.loads(json.dumps(coco))["image"]["id"] == 3 and type(coco["image"]["id"]) is int
