import numpy as np
import pytest
import torch
from PIL import Image

from diffcut_engine import EngineConfig, InputError
from diffcut_engine.config import parse_size
from diffcut_engine.images import center_crop_box, list_image_files, load_image, prepare


@pytest.mark.parametrize("value,expected", [(1024, (1024, 1024)), ("1024", (1024, 1024)),
                                            ("1024x576", (576, 1024)), ((576, 1024), (576, 1024))])
def test_parse_size(value, expected):
    assert parse_size(value, multiple=32) == expected


@pytest.mark.parametrize("value", ["1000", "abc", (0, 32), 1024.0, "32x-5", True])
def test_parse_size_rejects(value):
    with pytest.raises(InputError):
        parse_size(value, multiple=32)


def test_config_defaults_are_the_paper():
    cfg = EngineConfig()
    assert cfg.model == "segmind/SSD-1B" and cfg.size == (1024, 1024) and cfg.grid_size == (32, 32)
    assert cfg.alpha == 10.0 and cfg.timestep == 50 and cfg.seed == 42
    # refinement: the official demo preset at the network size by default (docs/REFINE.md)
    assert cfg.refine == "demo" and cfg.pamr_iters is None and cfg.pamr_dilations is None
    assert cfg.refine_settings() == {"preset": "demo", "work_size": (1024, 1024), "iters": 30,
                                     "dilations": (1, 2, 4, 8, 12, 24, 32, 64)}
    assert EngineConfig(model="SD1.4").model == "CompVis/stable-diffusion-v1-4"
    assert EngineConfig(backbone="efficientnet-lite0").size == (768, 768)
    assert EngineConfig(backbone="efficientnet-lite0", size=256).size == (256, 256)


@pytest.mark.parametrize("kwargs,match", [
    ({"tau": 0}, "tau"), ({"alpha": -2}, "alpha"), ({"compat": "x"}, "compat"), ({"device": "tpu"}, "device"),
    ({"dtype": "int8"}, "dtype"), ({"batch_size": 0}, "batch_size"), ({"timestep": 1000}, "timestep"),
    ({"resize_mode": "pad"}, "resize_mode"), ({"size": "1024x576", "resize_mode": "center_crop"}, "square"),
    ({"pamr_dilations": (1, 0)}, "dilations"), ({"refine": "fast"}, "refine"), ({"pamr_iters": -1}, "pamr_iters"),
    ({"refine_backend": "gpu"}, "refine_backend"),
    # beyond the bounds the C++ core takes (2**31 reached its binding and raised a raw TypeError)
    ({"pamr_iters": 2**31}, r"pamr_iters must be an integer in \[0, 10000\]"),
    ({"pamr_dilations": (1, 2**31)}, r"pamr_dilations must be integers in \[1, 32768\]"),
    ({"pamr_dilations": (32769,)}, "pamr_dilations"),
    # a diffusion model or revision next to the offline backbone (which loads its own weights) is not ignored
    ({"backbone": "efficientnet-lite0", "model": "/no/such/folder"}, "^model='/no/such/folder' applies to backbone"),
    ({"backbone": "efficientnet-lite0", "revision": "main"}, "^revision='main' applies to backbone='diffusion'"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(InputError, match=match):
        EngineConfig(**kwargs)


def test_model_naming_the_offline_backbone_selects_it(tmp_path, monkeypatch):
    cfg = EngineConfig(model="efficientnet-lite0")
    assert cfg.backbone == "efficientnet-lite0" and cfg.model == EngineConfig().model and cfg.size == (768, 768)
    # a local folder of that name is a model folder, not the backbone
    (tmp_path / "efficientnet-lite0").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = EngineConfig(model="efficientnet-lite0")
    assert cfg.backbone == "diffusion" and cfg.model == "efficientnet-lite0"


def test_config_is_frozen_and_replace_validates():
    cfg = EngineConfig()
    with pytest.raises(Exception):
        cfg.tau = 0.3
    assert cfg.replace(tau=0.3).tau == 0.3
    with pytest.raises(InputError, match="unknown"):
        cfg.replace(colour="red")


def test_load_image_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_image(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(InputError, match="bad.png: cannot decode"):
        load_image(bad)
    with pytest.raises(InputError, match="shape"):
        load_image(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(InputError, match="NaN"):
        load_image(np.full((4, 4, 3), np.nan, np.float32))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        load_image(np.full((4, 4, 3), 2.0, np.float32))
    with pytest.raises(InputError, match="unsupported"):
        load_image(12)
    with pytest.raises(InputError, match="directory"):
        load_image(tmp_path)
    with pytest.raises(InputError, match=r"image is too small \(1x3 px; at least 2x2\)"):
        load_image(np.zeros((3, 1, 3), np.uint8))
    assert tuple(load_image(np.zeros((2, 2, 3), np.uint8)).pixels.shape) == (3, 2, 2)


def test_load_image_forms_agree(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    ref = load_image(tmp_path / "a.png").pixels
    assert ref.shape == (3, 10, 12) and ref.dtype == torch.float32
    for form in (Image.fromarray(arr), arr, arr / 255.0, torch.from_numpy(arr).permute(2, 0, 1)):
        torch.testing.assert_close(load_image(form).pixels, ref)
    gray = load_image(arr[:, :, 0])
    assert gray.pixels.shape == (3, 10, 12)
    rgba = np.concatenate([arr, np.full((10, 12, 1), 7, np.uint8)], axis=2)
    torch.testing.assert_close(load_image(rgba).pixels, ref)


def test_center_crop_matches_official_rounding():
    # side min(H, W) - 1, offsets rounded like torchvision's CenterCrop
    assert center_crop_box(300, 451) == (0, 76, 299, 299)
    assert center_crop_box(100, 140) == (0, 20, 99, 99)
    img = load_image(np.zeros((100, 140, 3), np.uint8))
    net, view, box = prepare(img, (64, 64), "center_crop")
    assert net.shape == (3, 64, 64) and view.shape == (3, 99, 99) and box == (0, 20, 99, 99)
    assert float(net.min()) == -1.0


def test_resize_without_antialias_matches_interpolate():
    rng = np.random.default_rng(1)
    arr = rng.random((50, 70, 3)).astype(np.float32)
    img = load_image(arr)
    net, view, box = prepare(img, (32, 64), "resize")
    ref = torch.nn.functional.interpolate(img.pixels[None], size=(32, 64), mode="bilinear",
                                          align_corners=False)[0] * 2 - 1
    torch.testing.assert_close(net, ref)
    assert box == (0, 0, 50, 70)


def test_list_image_files(tmp_path):
    (tmp_path / "d").mkdir()
    for n in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / "d" / n).write_bytes(b"x")
    files = list_image_files([tmp_path / "d", str(tmp_path / "d" / "*.png"), tmp_path / "missing.png",
                              str(tmp_path / "none*.png")])
    names = [p.name for p in files]
    assert names == ["a.jpg", "b.png", "b.png", "missing.png"]


def test_lazily_decoded_pil_image_that_fails_is_an_input_error(tmp_path):
    """``Image.open`` decodes lazily: a truncated file (or a closed image) passed as a PIL image fails only when the
    engine reads its pixels; that is an InputError naming the input, as for the same file given by path, so that a
    batch with ``errors="skip"`` (or a BatchError) keeps the other results."""
    from diffcut_engine.engine import Engine
    from diffcut_engine.errors import BatchError
    from toy_encoder import ColourEncoder

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
    for ext in ("png", "jpg"):
        Image.fromarray(arr).save(tmp_path / f"a.{ext}")
        data = (tmp_path / f"a.{ext}").read_bytes()
        (tmp_path / f"cut.{ext}").write_bytes(data[:len(data) // 2])
        with pytest.raises(InputError, match="cannot decode"):
            load_image(Image.open(tmp_path / f"cut.{ext}"))
    closed = Image.open(tmp_path / "a.png")
    closed.close()
    with pytest.raises(InputError, match="cannot decode"):
        load_image(closed)
    engine = Engine(EngineConfig(size=64, device="cpu", refine=False), encoder=ColourEncoder())
    out = engine.segment([arr, Image.open(tmp_path / "cut.png"), arr], errors="skip")
    assert out[0] is not None and out[1] is None and out[2] is not None
    with pytest.raises(BatchError) as info:
        engine.segment([arr, Image.open(tmp_path / "cut.jpg")])
    assert info.value.results[0] is not None and list(info.value.errors) == [1]


@pytest.mark.parametrize("name,value", [("batch_size", True), ("timestep", True), ("seed", True),
                                        ("pamr_iters", True), ("graph_threads", True), ("batch_size", 2.0),
                                        ("seed", "42")])
def test_integer_options_refuse_bool_and_non_integers(name, value):
    """As for tau (numpy scalars accepted, True refused): True is no batch size, timestep or seed."""
    with pytest.raises(InputError, match=name):
        EngineConfig(**{name: value})


def test_integer_options_take_numpy_integers_as_python_ints():
    cfg = EngineConfig(batch_size=np.int64(2), timestep=np.int32(50), seed=np.int64(7), pamr_iters=np.int64(3),
                       pamr_dilations=np.array([1, 2]), graph_threads=np.int64(2), size=(np.int64(64), 96),
                       output_size=np.int64(40), method="rwncut",
                       rwncut={"k": np.int64(2), "min_size": np.int32(4), "factors": np.array([1, 2]),
                               "grid_factor": np.int64(2)})
    assert (cfg.batch_size, cfg.timestep, cfg.seed, cfg.pamr_iters, cfg.graph_threads) == (2, 50, 7, 3, 2)
    assert cfg.pamr_dilations == (1, 2) and cfg.size == (64, 96) and cfg.output_size == (40, 40)
    assert (cfg.rwncut.k, cfg.rwncut.min_size, cfg.rwncut.factors, cfg.rwncut.grid_factor) == (2, 4, (1, 2), 2)
    values = [cfg.batch_size, cfg.timestep, cfg.seed, cfg.pamr_iters, cfg.graph_threads, *cfg.pamr_dilations,
              *cfg.size, cfg.rwncut.k, *cfg.rwncut.factors]
    assert all(type(v) is int for v in values)
    assert cfg == cfg.replace(batch_size=2) and hash(cfg) == hash(cfg.replace(batch_size=2))
    with pytest.raises(InputError, match="rwncut k"):
        EngineConfig(method="rwncut", rwncut={"k": True})


def test_read_only_arrays_load_without_torch_warning():
    """``np.asarray(PIL image)`` is read-only: loading it (as the video pipeline and the batch worker do, through
    load_image) printed torch's "array is not writable" warning; only Engine.segment copied it first. torch warns
    once per process, so this runs in a fresh one with warnings as errors."""
    import subprocess
    import sys

    code = (
        "import warnings, numpy as np\n"
        "warnings.simplefilter('error')\n"
        "from diffcut_engine.images import load_image\n"
        "for dtype, scale in ((np.uint8, 1), (np.uint16, 257), (np.float32, 1 / 255)):\n"
        "    for shape in ((6, 7, 3), (6, 7), (6, 7, 4)):\n"
        "        a = (np.arange(np.prod(shape)).reshape(shape) % 200 * scale).astype(dtype)\n"
        "        a.flags.writeable = False\n"
        "        load_image(a)\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_16bit_colour_files_warn_that_pillow_reads_8_bits(tmp_path, caplog):
    """README said 16-bit images are divided by 65535; Pillow decodes 16-bit colour PNGs and TIFFs at 8 bits (only
    16-bit grayscale keeps its precision), silently: a 0x8000 / 0x81FF edge was one uniform segment. It is now
    said, with what keeps 16 bits (a uint16 array), and the array path keeps them."""
    import logging
    import struct
    import zlib

    import tifffile

    from diffcut_engine.images import load_image

    ramp = ((np.arange(40)[None, :, None] + 32768) * np.ones((20, 1, 3))).astype(np.uint16)

    def png(path, arr, colour_type):
        raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in arr)

        def chunk(kind, data):
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

        path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", arr.shape[1], arr.shape[0], 16,
                                                                            colour_type, 0, 0, 0))
                         + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))

    png(tmp_path / "rgb16.png", ramp, 2)
    png(tmp_path / "gray16.png", ramp[..., 0], 0)
    tifffile.imwrite(tmp_path / "rgb16.tif", ramp, photometric="rgb")
    for name, warned in (("rgb16.png", True), ("rgb16.tif", True), ("gray16.png", False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="diffcut_engine.images"):
            load_image(str(tmp_path / name))
        assert ("16-bit colour" in caplog.text) == warned, name
    gray = load_image(str(tmp_path / "gray16.png")).pixels
    assert len(np.unique(gray[0].numpy())) == 40  # 16-bit grayscale keeps every level
    full = load_image(ramp).pixels
    assert len(np.unique(full[0].numpy())) == 40 and float(full.max()) == pytest.approx(32807 / 65535)
