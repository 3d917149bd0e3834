"""Hostile and unusual inputs (issue 17): never destroy an input, never hang, never read an image wrongly, one
``error:`` line (exit code 2) for every failure that stops a command.

Each test names the issue item it keeps fixed. Everything is small and offline: the colour test encoder stands in
for a backbone, videos are a dozen 128x96 frames made here.
"""

from __future__ import annotations

import importlib.util
import json
import re
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from diffcut_engine import EngineConfig
from diffcut_engine.cli import main
from diffcut_engine.engine import Engine

from toy_encoder import ColourEncoder

W, H = 128, 96


@pytest.fixture(scope="module")
def engine():
    return Engine(EngineConfig(size=(192, 256), tau=0.5, device="cpu", refine=False, batch_size=4),
                  encoder=ColourEncoder())


@pytest.fixture
def toy_cli(monkeypatch):
    """``diffcut`` commands build their engine with the colour test encoder (no model load)."""
    import diffcut_engine.engine as engine_module

    real = engine_module.Engine
    built = []

    def factory(config, **kw):
        built.append(config)
        return real(config.replace(device="cpu"), encoder=ColourEncoder())

    monkeypatch.setattr(engine_module, "Engine", factory)
    return built


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def frame(i):
    img = np.empty((H, W, 3), np.uint8)
    img[:] = (40, 90, 200)
    img[16:48, 4 + 3 * i:36 + 3 * i] = (220, 30, 30)
    return img


def make_video(path, pts=None, *, time_base=Fraction(1, 1000), rate=25, faststart=False):
    """H.264 video of a moving red square; ``pts`` in ``time_base`` units (default: constant ``rate``)."""
    av = pytest.importorskip("av")
    pts = list(pts) if pts is not None else [int(i / rate / time_base) for i in range(12)]
    out = av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {})
    vs = out.add_stream("libx264", rate=rate)
    vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
    vs.time_base = time_base
    vs.codec_context.time_base = time_base
    vs.options = {"crf": "10", "preset": "ultrafast"}
    for i, p in enumerate(pts):
        f = av.VideoFrame.from_ndarray(frame(i), format="rgb24")
        f.pts, f.time_base = p, time_base
        for pk in vs.encode(f):
            out.mux(pk)
    for pk in vs.encode():
        out.mux(pk)
    out.close()
    return path


def frame_times(path):
    """Presentation times (seconds) of the decoded frames of a video file."""
    import av

    with av.open(str(path)) as c:
        return [float(f.pts * f.time_base) for f in c.decode(video=0)]


# ------------------------------------------------------------------------------------------------------------
# 1. an output equal to the input never destroys it
# ------------------------------------------------------------------------------------------------------------

def test_video_output_equal_to_input_is_refused_before_anything_is_written(engine, tmp_path, capsys):
    from diffcut_engine.video import VideoError, write_video

    src = make_video(tmp_path / "big.mp4")
    before = src.read_bytes()
    link = tmp_path / "alias.mp4"
    link.symlink_to(src)
    for out in (src, link):
        code, _, err = run(["video", str(src), "-o", str(out), "-q", "--backbone", "efficientnet-lite0"], capsys)
        assert code == 2 and "input video itself" in one_error_line(err)
    code, _, err = run(["video", str(src), "-o", str(tmp_path / "o.mp4"), "--labels-out", str(src), "-q"], capsys)
    assert code == 2 and "input video itself" in one_error_line(err)
    with pytest.raises(VideoError, match="input video itself"):   # the Python API too
        write_video(engine.segment_video(src), src)
    with pytest.raises(VideoError, match="input video itself"):
        write_video(engine.segment_video(src), tmp_path / "o.mp4", labels_out=src)
    assert src.read_bytes() == before


# ------------------------------------------------------------------------------------------------------------
# 2. variable frame rate: the input's time base and every pts are kept
# ------------------------------------------------------------------------------------------------------------

VFR_PTS = [0, 40, 140, 340, 380, 420, 600, 640, 700, 900, 940, 1000]


@pytest.mark.parametrize("src_ext", ["mp4", "mkv"])
def test_variable_frame_rate_keeps_every_timestamp(engine, tmp_path, src_ext):
    from diffcut_engine.video import write_video

    src = make_video(tmp_path / f"vfr.{src_ext}", VFR_PTS)
    times = frame_times(src)
    assert len(set(np.round(np.diff(times), 3))) > 2          # really a variable rate
    for ext in ("mp4", "mkv"):
        out = tmp_path / f"out.{ext}"
        stats = write_video(engine.segment_video(src), out)
        assert stats.frames == len(VFR_PTS) and not stats.truncated
        np.testing.assert_allclose(frame_times(out), times, atol=1e-3)


def test_timestamps_kept_with_a_90_khz_clock_and_a_16_bit_encoder(engine, tmp_path):
    from diffcut_engine.video import write_video
    from diffcut_engine.video.writers import encoder_time_base

    assert encoder_time_base("mpeg4", Fraction(1, 90000)) == Fraction(1, 45000)
    assert encoder_time_base("mpeg4", Fraction(1001, 30000)) == Fraction(1001, 30000)
    assert encoder_time_base("libx264", Fraction(1, 90000)) == Fraction(1, 90000)
    src = make_video(tmp_path / "vfr.ts", [90 * p for p in VFR_PTS], time_base=Fraction(1, 90000))
    times = frame_times(src)
    for codec in ("mpeg4", "libx264"):
        out = tmp_path / f"out_{codec}.mkv"
        write_video(engine.segment_video(src), out, codec=codec)
        np.testing.assert_allclose(frame_times(out), times, atol=1e-3)


# ------------------------------------------------------------------------------------------------------------
# 6 (video) and 11 (video): unknown container, a video without a decodable frame
# ------------------------------------------------------------------------------------------------------------

def test_unknown_output_container_is_one_line_before_the_model_loads(tmp_path, capsys, toy_cli):
    src = make_video(tmp_path / "in.mp4")
    code, _, err = run(["video", str(src), "-o", str(tmp_path / "out.xyz"), "-q"], capsys)
    assert code == 2 and "unknown video container '.xyz'" in one_error_line(err)
    assert not toy_cli and not (tmp_path / "out.xyz").exists()


def test_video_without_a_decodable_frame_says_nothing_was_written(tmp_path, capsys, toy_cli):
    src = make_video(tmp_path / "fast.mp4", faststart=True)   # index first, then the frames
    data = src.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:data.index(b"mdat") + 64])        # the index survives, no frame does
    out = tmp_path / "o.mp4"
    code, _, err = run(["video", str(cut), "-o", str(out), "-q"], capsys)
    line = one_error_line(err)
    assert code == 2 and "after 0 frames" in line and line.endswith("no frame was written")
    assert "were written to" not in err and not out.exists()


@pytest.mark.parametrize("case", ["under-a-file", "stats-folder", "stats-under-a-file", "labels-dir-is-a-file",
                                  "labels-npz-under-a-file", "unknown-codec", "audio-codec", "opacity",
                                  "max-frames-0", "every-0"])
def test_video_output_options_fail_in_one_line_before_the_model_loads(tmp_path, capsys, toy_cli, case):
    """Every output path and writer option of ``diffcut video`` is checked before the model loads (was: a
    traceback after the whole video, or a silently accepted opacity of 3, or rc 0 for --max-frames 0 with no
    output file at all)."""
    src = make_video(tmp_path / "in.mp4")
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    out = tmp_path / "o.mp4"
    extra, match = {
        "under-a-file": (["-o", str(afile / "o.mp4")], "is a file, not a folder"),
        "stats-folder": (["--stats", str(tmp_path)], "is a folder"),
        "stats-under-a-file": (["--stats", str(afile / "s.json")], "is a file, not a folder"),
        "labels-dir-is-a-file": (["--labels-out", str(afile)], "not a folder"),
        "labels-npz-under-a-file": (["--labels-out", str(afile / "l.npz")], "is a file, not a folder"),
        "unknown-codec": (["--codec", "no-such-codec"], "unknown video codec 'no-such-codec'"),
        "audio-codec": (["--codec", "aac"], "not video"),
        "opacity": (["--opacity", "3"], r"opacity must lie in \[0, 1\]"),
        "max-frames-0": (["--max-frames", "0"], "--max-frames: must be at least 1"),
        "every-0": (["--every", "0"], "--every: must be at least 1"),
    }[case]
    argv = ["video", str(src), "-o", str(out), "-q", *extra]
    if case.startswith("max-frames") or case.startswith("every"):  # argparse refuses the value itself
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2 and re.search(match, capsys.readouterr().err)
    else:
        code, _, err = run(argv, capsys)
        assert code == 2 and re.search(match, one_error_line(err))
    assert not toy_cli and not out.exists() and afile.read_text() == "x"


def test_video_writer_api_refuses_a_bad_opacity_or_codec(engine, tmp_path):
    from diffcut_engine.errors import InputError
    from diffcut_engine.video import write_video

    src = make_video(tmp_path / "in.mp4")
    for kw, match in (({"opacity": 1.5}, "opacity"), ({"opacity": -0.1}, "opacity"),
                      ({"codec": "no-such-codec"}, "codec")):
        with pytest.raises(InputError, match=match):
            write_video(engine.segment_video(str(src), max_frames=2), tmp_path / "o.mp4", **kw)
        assert not (tmp_path / "o.mp4").exists()


def test_bench_json_that_cannot_be_written_fails_before_the_model_loads(tmp_path, capsys, toy_cli):
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    for target, match in ((tmp_path, "is a folder"), (afile / "b.json", "is a file, not a folder")):
        code, _, err = run(["bench", "--iters", "1", "--warmup", "0", "--json", str(target), "-q"], capsys)
        assert code == 2 and match in one_error_line(err)
    assert not toy_cli


# ------------------------------------------------------------------------------------------------------------
# 3. a FIFO (or any non-regular file) is refused at once; 11: symbolic link loops and self-links
# ------------------------------------------------------------------------------------------------------------

def _png(path, arr=None):
    if arr is None:
        arr = np.zeros((64, 96, 3), np.uint8)
        arr[:, 40:] = (200, 30, 30)
    Image.fromarray(arr).save(path)
    return path


def test_fifo_input_is_refused_without_blocking(engine, tmp_path):
    import os

    from diffcut_engine.errors import BatchError, InputError
    from diffcut_engine.images import load_image

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)   # opening it for reading would block until a writer comes
    with pytest.raises(InputError, match="pipe.png: not a regular file"):
        load_image(fifo)
    good = _png(tmp_path / "good.png")
    with pytest.raises(BatchError) as info:   # the other inputs are still processed
        engine.segment([fifo, good])
    assert info.value.results[0] is None and info.value.results[1].labels.shape == (64, 96)
    if importlib.util.find_spec("av") is not None:            # a FIFO as a video is refused the same way
        from diffcut_engine.video import VideoError, probe_video

        with pytest.raises(VideoError, match="pipe.png: not a regular file"):
            probe_video(fifo)


def test_symlink_loop_and_self_link_in_a_recursive_glob(tmp_path):
    import os

    from diffcut_engine.errors import InputError
    from diffcut_engine.images import list_image_files, load_image

    (tmp_path / "sub").mkdir()
    _png(tmp_path / "sub" / "a.png")
    _png(tmp_path / "b.png")
    (tmp_path / "self").symlink_to(".")
    files = list_image_files([str(tmp_path / "**" / "*.png")])
    assert [p.relative_to(tmp_path).as_posix() for p in files] == ["b.png", "sub/a.png"]
    os.symlink("loop2.png", tmp_path / "loop1.png")
    os.symlink("loop1.png", tmp_path / "loop2.png")
    with pytest.raises(InputError, match="loop1.png: symbolic link loop"):
        load_image(tmp_path / "loop1.png")
    os.symlink("gone.png", tmp_path / "dangling.png")
    with pytest.raises(InputError, match="dangling.png: broken symbolic link"):
        load_image(tmp_path / "dangling.png")


# ------------------------------------------------------------------------------------------------------------
# 4. 16-bit and float images are scaled to their real range (file and API alike)
# ------------------------------------------------------------------------------------------------------------

def _png16_rgb(path, arr):
    """Write an (H, W, 3) uint16 array as a 48-bit RGB PNG (Pillow cannot write one)."""
    import struct
    import zlib

    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    from diffcut_engine.images import load_image

    ramp = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (32, 1))
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")       # really stored as 16 bits
    pixels = load_image(path).pixels
    np.testing.assert_allclose(pixels[0, 0].numpy(), ramp[0] / 65535.0, atol=1e-6)
    assert float((pixels == 1.0).float().mean()) < 0.01
    rgb = tmp_path / "ramp48.png"                        # 16 bits per channel, RGB (Pillow keeps the high byte)
    _png16_rgb(rgb, np.stack([ramp] * 3, axis=-1))
    np.testing.assert_allclose(load_image(rgb).pixels[:, 0].numpy(), np.stack([ramp[0] / 65535.0] * 3),
                               atol=1.5 / 255)
    api = load_image(ramp).pixels                        # the Python API takes the uint16 array too
    np.testing.assert_allclose(api.numpy(), pixels.numpy(), atol=1e-6)
    import torch

    if hasattr(torch, "uint16"):
        t = torch.from_numpy(ramp.astype(np.int32)).to(torch.uint16)[None]
        np.testing.assert_allclose(load_image(t).pixels.numpy(), pixels.numpy(), atol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 4000.0])
def test_float_tiff_is_read_in_its_range(tmp_path, scale):
    from diffcut_engine.images import load_image

    ramp = np.tile(np.linspace(0.0, 1.0, 128, dtype=np.float32), (16, 1))
    path = tmp_path / "ramp.tif"
    Image.fromarray(ramp * scale, mode="F").save(path)
    pixels = load_image(path).pixels
    assert pixels.shape == (3, 16, 128)
    np.testing.assert_allclose(pixels[1, 3].numpy(), ramp[3], atol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# 5. EXIF orientation is applied; 11: an animated GIF says that only its first frame is used
# ------------------------------------------------------------------------------------------------------------

def test_exif_orientation_is_applied(engine, tmp_path):
    from diffcut_engine.images import load_image

    arr = np.zeros((100, 200, 3), np.uint8)      # stored 200 wide, 100 high
    arr[:, :60] = (250, 20, 20)                  # red on the stored left
    exif = Image.Exif()
    exif[0x0112] = 6                             # rotate 90 degrees clockwise to view
    path = tmp_path / "rotated.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=95)
    pixels = load_image(path).pixels
    assert tuple(pixels.shape[-2:]) == (200, 100)           # as viewers show it: 100 wide, 200 high
    assert pixels[0, :40, 50].mean() > 0.8 and pixels[0, -40:, 50].mean() < 0.3   # the red part is at the top
    assert engine.segment(path).labels.shape == (200, 100)
    with Image.open(path) as im:                             # a PIL image passed to the API likewise
        assert tuple(load_image(im).pixels.shape[-2:]) == (200, 100)


def test_animated_gif_warns_that_only_the_first_frame_is_used(tmp_path, caplog):
    from diffcut_engine.images import load_image

    frames = [Image.fromarray(np.full((32, 32, 3), v, np.uint8)) for v in (0, 120, 250)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with caplog.at_level("WARNING", logger="diffcut_engine"):
        pixels = load_image(path).pixels
    assert float(pixels.max()) < 0.05                        # frame 0
    assert "anim.gif" in caplog.text and "3 frames" in caplog.text and "only the first" in caplog.text


def test_animated_webp_is_refused_by_video_before_the_model_loads(tmp_path, capsys, toy_cli, caplog):
    """FFmpeg decodes no frame of an animated WebP: `diffcut video anim.webp` loaded the model, then ended with
    'writing the output video failed: Invalid argument', while the image warning pointed users to it."""
    pytest.importorskip("av")
    from diffcut_engine.images import load_image

    frames = [Image.fromarray(np.full((32, 48, 3), v, np.uint8)) for v in (0, 120, 250)]
    path = tmp_path / "anim.webp"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    if getattr(Image.open(path), "n_frames", 1) < 2:
        pytest.skip("this Pillow writes no animated WebP")
    code, _, err = run(["video", str(path), "-o", str(tmp_path / "o.mp4"), "-q"], capsys)
    assert code == 2 and "animated WebP" in one_error_line(err) and not toy_cli
    assert not (tmp_path / "o.mp4").exists()
    with caplog.at_level("WARNING", logger="diffcut_engine"):
        load_image(path)
    assert "only the first" in caplog.text and "diffcut video" not in caplog.text
    still = tmp_path / "still.webp"                       # a still WebP is still a one-frame video
    frames[0].save(still)
    from diffcut_engine.video import probe_video

    assert probe_video(still).width == 48


# ------------------------------------------------------------------------------------------------------------
# 8. export --overwrite deletes only an earlier export; 6: --out a file; 10 and 6: damaged manifest file tables
# ------------------------------------------------------------------------------------------------------------

def test_export_overwrite_never_deletes_a_folder_that_is_not_an_export(tmp_path, capsys):
    pytest.importorskip("onnx")
    from diffcut_engine.encoders.onnx_export import export_onnx
    from diffcut_engine.errors import InputError

    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "holiday.jpg").write_bytes(b"irreplaceable")
    with pytest.raises(InputError, match="not an earlier export"):
        export_onnx("no/such-model", precious, size=64, overwrite=True, verify=False, exporter="torchscript")
    code, _, err = run(["export", "--model", "no/such-model", "--out", str(precious), "--overwrite",
                        "--exporter", "torchscript", "--no-verify"], capsys)
    assert code == 2 and "not an earlier export" in one_error_line(err)
    assert (precious / "holiday.jpg").read_bytes() == b"irreplaceable"
    afile = tmp_path / "out.txt"
    afile.write_text("keep")
    code, _, err = run(["export", "--model", "no/such-model", "--out", str(afile), "--exporter", "torchscript",
                        "--no-verify"], capsys)
    assert code == 2 and "existing file, not a folder" in one_error_line(err)
    assert afile.read_text() == "keep"


def _engine_folder(tmp_path, files):
    from diffcut_engine.encoders import artifacts

    folder = tmp_path / "engine"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"graph")
    return str(folder), {"files": files}, artifacts


@pytest.mark.parametrize("files", [None, [], {"model.onnx": None}])
def test_manifest_with_a_damaged_file_table_is_one_clear_error(tmp_path, files):
    from diffcut_engine.errors import ModelLoadError

    folder, manifest, artifacts = _engine_folder(tmp_path, files)
    with pytest.raises(ModelLoadError, match="manifest"):
        artifacts.check_files(folder, manifest)


def test_manifest_paths_leaving_the_engine_folder_are_refused(tmp_path):
    from diffcut_engine.errors import ModelLoadError

    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"not yours")
    folder, _, artifacts = _engine_folder(tmp_path, None)
    facts = artifacts.describe_files(folder, ["model.onnx"])["model.onnx"]
    secret = {"bytes": 9, "sha256": artifacts.file_digest(str(outside))}
    (tmp_path / "engine" / "link.bin").symlink_to(outside)
    for name in (str(outside), "../secret.bin", "link.bin"):
        manifest = {"files": {"model.onnx": facts, name: secret}}
        with pytest.raises(ModelLoadError, match="outside the engine folder"):
            artifacts.check_files(folder, manifest)
    artifacts.check_files(folder, {"files": {"model.onnx": facts}})   # an intact folder still passes


# ------------------------------------------------------------------------------------------------------------
# 6. output folder problems are one error line before the model loads; a full disk stops cleanly
# 7. no silent overwrite: a non-empty folder needs --overwrite or --resume; one run at a time
# ------------------------------------------------------------------------------------------------------------

@pytest.fixture
def three_images(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(3):
        arr = np.zeros((64, 96, 3), np.uint8)
        arr[:, : 30 + 10 * k] = (200, 40, 40)
        arr[:, 30 + 10 * k:] = (30, 90, 220)
        _png(folder / f"img{k}.png", arr)
    return folder


SEG = ["--size", "64", "--no-refine", "-q"]


def test_segment_output_problems_are_one_line_before_the_model_loads(three_images, tmp_path, capsys, toy_cli):
    afile = tmp_path / "taken.txt"
    afile.write_text("keep")
    code, _, err = run(["segment", str(three_images), "-o", str(afile), *SEG], capsys)
    assert code == 2 and "existing file, not a folder" in one_error_line(err) and afile.read_text() == "keep"
    code, _, err = run(["segment", str(three_images), "-o", str(afile / "sub"), *SEG], capsys)
    assert code == 2 and "cannot create the output folder" in one_error_line(err)
    import os

    if os.geteuid() != 0:           # root may write anywhere
        ro = tmp_path / "readonly"
        ro.mkdir(mode=0o500)
        code, _, err = run(["segment", str(three_images), "-o", str(ro), *SEG], capsys)
        assert code == 2 and "cannot write to the output folder" in one_error_line(err)
    if os.path.isdir("/sys/kernel"):  # sysfs: not writable, even for root
        code, _, err = run(["segment", str(three_images), "-o", "/sys/kernel/diffcut-out", *SEG], capsys)
        assert code == 2 and "output folder" in one_error_line(err)
    assert not toy_cli                                          # no engine was built


def test_disk_full_stops_cleanly_and_writes_the_summary_of_what_was_done(three_images, tmp_path, capsys,
                                                                         toy_cli, monkeypatch):
    import errno

    from diffcut_engine.cli import segment as segment_command

    real, calls = segment_command.write_outputs, []

    def full_after_one(seg, view, outdir, stem, **kw):
        calls.append(stem)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(outdir / f"{stem}_labels.png"))
        return real(seg, view, outdir, stem, **kw)

    monkeypatch.setattr(segment_command, "write_outputs", full_after_one)
    out = tmp_path / "out"
    code, stdout, err = run(["segment", str(three_images), "-o", str(out), *SEG], capsys)
    line = one_error_line(err)
    assert code == 2 and "disk is full" in line and "stopped after 1 of 3 inputs" in line
    assert len(calls) == 2                                      # the third input was not run
    summary = json.loads((out / "summary.json").read_text())
    assert [r["input"] for r in summary["results"]] == [str(three_images / "img0.png")]
    assert stdout.count("segments at tau") == 1


def test_a_failed_labels_write_stops_the_run_and_leaves_no_partial_file(three_images, tmp_path, capsys, toy_cli,
                                                                        monkeypatch):
    """Segmentation.save words a failed write as an InputError (from the OSError): it used to be taken for one
    input's failure, the run went on (exit 1) and the truncated file stayed."""
    import errno

    from diffcut_engine.errors import InputError
    from diffcut_engine.result import Segmentation

    real, calls = Segmentation.save, []

    def full_on_the_second(self, path):
        calls.append(path)
        if len(calls) == 1:
            return real(self, path)
        with open(path, "wb") as fh:
            fh.write(b"\x89PNG partial")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise InputError(f"cannot write {str(path)!r}: {exc.strerror}") from exc

    monkeypatch.setattr(Segmentation, "save", full_on_the_second)
    out = tmp_path / "out"
    code, stdout, err = run(["segment", str(three_images), "-o", str(out), *SEG], capsys)
    line = one_error_line(err)
    assert code == 2 and "disk is full" in line and "stopped after 1 of 3 inputs" in line
    assert len(calls) == 2 and not (out / "img1_labels.png").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert [r["input"] for r in summary["results"]] == [str(three_images / "img0.png")]


def test_resume_and_overwrite_from_another_working_directory(three_images, tmp_path, capsys, toy_cli, monkeypatch):
    """summary.json's relative paths are relative to the run's directory (its ``cwd``): a later run from elsewhere
    used to find none of them (--resume redid everything under -1 names, --overwrite left stale files)."""
    import shutil

    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    for name in ("img0.png", "img1.png"):
        shutil.copy(three_images / name, a / name)
    monkeypatch.chdir(a)
    code, _, err = run(["segment", "img0.png", "img1.png", "-o", "out", *SEG], capsys)
    assert code == 0, err
    first = sorted(p.name for p in (a / "out").iterdir())
    monkeypatch.chdir(b)
    code, stdout, err = run(["segment", "../A/img0.png", "../A/img1.png", "-o", "../A/out", "--resume", *SEG],
                            capsys)
    assert code == 0, err
    assert sorted(p.name for p in (a / "out").iterdir()) == first      # both skipped: no -1 names
    assert stdout.count("segments at tau") == 0
    code, _, err = run(["segment", "../A/img0.png", "-o", "../A/out", "--overwrite", *SEG], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (a / "out").iterdir()) == ["img0_labels.png", "img0_overlay.png", "summary.json"]


def test_an_output_folder_that_is_the_input_folder_does_not_take_its_outputs_as_inputs(three_images, capsys,
                                                                                        toy_cli):
    """-o equal to the input folder: a --resume rerun segmented the first run's *_labels.png and *_overlay.png
    (then *_labels_labels.png, ... on every rerun); a file named on the command line is still an input."""
    folder = three_images
    code, _, err = run(["segment", str(folder), "-o", str(folder), "--resume", *SEG], capsys)
    assert code == 0, err
    first = sorted(p.name for p in folder.iterdir())
    assert "img0_labels.png" in first and not any("_labels_" in name for name in first)
    for _ in range(2):
        code, stdout, err = run(["segment", str(folder), "-o", str(folder), "--resume", *SEG], capsys)
        assert code == 0, err
        assert sorted(p.name for p in folder.iterdir()) == first and "outputs, not inputs" in err
        assert "resuming: 3 inputs already done" in err
    code, _, err = run(["segment", str(folder / "img0_labels.png"), "-o", str(folder), "--resume", *SEG], capsys)
    assert code == 0, err
    assert (folder / "img0_labels_labels.png").is_file()


@pytest.mark.parametrize("stop", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_run_records_what_it_finished(three_images, tmp_path, capsys, toy_cli, monkeypatch, stop):
    """Ctrl-C (or an unexpected error) after the first image: summary.json was not written, so --resume redid the
    finished image under a -1 name and left the first files orphaned."""
    from diffcut_engine.cli import segment as cli_segment

    real, calls = cli_segment.write_outputs, []

    def stop_on_the_second(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise stop("stopped")
        return real(*a, **kw)

    monkeypatch.setattr(cli_segment, "write_outputs", stop_on_the_second)
    out = tmp_path / "out"
    if stop is KeyboardInterrupt:
        code, _, err = run(["segment", str(three_images), "-o", str(out), *SEG], capsys)
        assert code == 130
    else:
        with pytest.raises(RuntimeError):
            main(["segment", str(three_images), "-o", str(out), *SEG])
    summary = json.loads((out / "summary.json").read_text())
    assert [r["input"] for r in summary["results"]] == [str(three_images / "img0.png")]
    monkeypatch.setattr(cli_segment, "write_outputs", real)
    code, _, err = run(["segment", str(three_images), "-o", str(out), "--resume", *SEG], capsys)
    assert code == 0, err
    assert "resuming: 1 inputs already done" in err
    assert sorted(p.name for p in out.glob("*_labels.png")) == ["img0_labels.png", "img1_labels.png",
                                                               "img2_labels.png"]


def test_a_non_empty_output_folder_needs_overwrite_or_resume(three_images, tmp_path, capsys, toy_cli):
    out = tmp_path / "out"
    code, first, _ = run(["segment", str(three_images / "img0.png"), "-o", str(out), *SEG], capsys)
    assert code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = run(["segment", str(three_images / "img1.png"), "-o", str(out), *SEG], capsys)
    assert code == 2 and "not empty" in one_error_line(err) and "--overwrite" in err and "--resume" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before   # the first run's files are intact

    # --resume: another input of the same stem gets a new name, the summary is merged, done inputs skipped
    other = tmp_path / "other"
    other.mkdir()
    _png(other / "img0.png", np.full((64, 96, 3), 90, np.uint8))
    code, _, err = run(["segment", str(other / "img0.png"), str(three_images / "img0.png"), "-o", str(out),
                        "--resume", *SEG], capsys)
    assert code == 0, err
    assert (out / "img0_labels.png").read_bytes() == before["img0_labels.png"]
    assert (out / "img0-1_labels.png").is_file()
    results = json.loads((out / "summary.json").read_text())["results"]
    assert sorted(r["input"] for r in results) == sorted([str(three_images / "img0.png"), str(other / "img0.png")])
    assert len(results) == 2                                    # img0 of the first run was not redone

    # --overwrite: the earlier results go, no stale file stays; other files in the folder are left alone
    (out / "notes.txt").write_text("mine")
    code, _, err = run(["segment", str(three_images / "img2.png"), "-o", str(out), "--overwrite", *SEG], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["img2_labels.png", "img2_overlay.png", "notes.txt",
                                                      "summary.json"]
    assert [r["input"] for r in json.loads((out / "summary.json").read_text())["results"]] == \
        [str(three_images / "img2.png")]


def test_a_second_run_into_a_busy_folder_is_refused(three_images, tmp_path, capsys, toy_cli):
    import subprocess
    import sys

    from diffcut_engine.outputs import LOCK_NAME, OutputFolder

    out = tmp_path / "out"
    with OutputFolder(out):                                      # a run in progress (this process)
        holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            (out / LOCK_NAME).write_text(json.dumps({"pid": holder.pid}))
            code, _, err = run(["segment", str(three_images), "-o", str(out), *SEG], capsys)
            assert code == 2 and f"in use by another diffcut run (pid {holder.pid})" in one_error_line(err)
        finally:
            holder.kill()
            holder.wait()
    assert not (out / LOCK_NAME).exists()
    (out / LOCK_NAME).write_text(json.dumps({"pid": holder.pid}))   # a lock left by a killed run: taken over
    code, _, err = run(["segment", str(three_images), "-o", str(out), *SEG], capsys)
    assert code == 0, err
    assert not (out / LOCK_NAME).exists()


def test_outputs_never_overwrite_an_input(tmp_path, capsys, toy_cli):
    folder = tmp_path / "work"
    folder.mkdir()
    _png(folder / "a.png")
    victim = _png(folder / "a_labels.png")                      # an input named like an output of a.png
    before = victim.read_bytes()
    code, _, err = run(["segment", str(folder / "a.png"), str(victim), "-o", str(folder), "--overwrite", *SEG],
                       capsys)
    assert code == 1 and "is one of the inputs" in err and victim.read_bytes() == before


# ------------------------------------------------------------------------------------------------------------
# 9 and 6: eval cache records are validated; what does not check out is recomputed
# ------------------------------------------------------------------------------------------------------------

def test_invalid_eval_cache_records_are_recomputed(tmp_path):
    from diffcut_engine.eval import get_dataset
    from diffcut_engine.eval.runner import evaluate, output_paths

    from eval_fixtures import make_dataset

    key, root, _, _ = make_dataset("voc-devkit", tmp_path / "voc", n=4, size=(80, 104))
    ds = get_dataset(key, root)

    def engine_and_encoder():
        enc = ColourEncoder()
        return Engine(EngineConfig(size=128, device="cpu", refine=False, batch_size=1), encoder=enc), enc

    out = tmp_path / "run.json"
    full = evaluate(ds, engine_and_encoder()[0], eval_size=64, out=out, progress=False)
    cache = output_paths(out)["cache"]
    header, *records = cache.read_text().splitlines()
    recs = [json.loads(line) for line in records]
    for r in recs[0]["taus"].values():               # true positives x1000: pixel accuracy above 100 %
        r["tp"] = [v * 1000 for v in r["tp"]]
    del recs[1]["taus"]                               # the cache record without "taus" (was a KeyError)
    for r in recs[2]["taus"].values():
        r["segments"] = -3
    cache.write_text("\n".join([header] + [json.dumps(r) for r in recs]) + "\n")
    eng, enc = engine_and_encoder()
    again = evaluate(ds, eng, eval_size=64, out=out, progress=False)
    assert again["images_this_run"] == 3 and enc.calls == 3        # the three bad records, not the good one
    assert again["results"] == full["results"]
    eng, enc = engine_and_encoder()
    assert evaluate(ds, eng, eval_size=64, out=out, progress=False)["images_this_run"] == 0 and enc.calls == 0


# ------------------------------------------------------------------------------------------------------------
# 11. tau: numpy scalars are numbers; bool, inf and NaN are not thresholds
# ------------------------------------------------------------------------------------------------------------

def test_tau_accepts_numpy_scalars_and_refuses_bool_and_infinity(engine):
    import math

    from diffcut_engine.errors import InputError
    from diffcut_engine.eval.runner import evaluate

    img = frame(0)
    ref = engine.segment(img, tau=0.3)
    for tau in (np.float32(0.3), np.float64(0.3)):
        seg = engine.segment(img, tau=tau)
        assert seg.tau == pytest.approx(0.3, rel=1e-6) and seg.num_segments == ref.num_segments
    for bad in (True, math.inf, math.nan, -0.2, "0.3"):
        with pytest.raises(InputError, match="tau"):
            engine.segment(img, tau=bad)
        with pytest.raises(InputError, match="taus"):
            evaluate(None, engine, taus=[0.3, bad])


# ------------------------------------------------------------------------------------------------------------
# 11. a uniform image is one segment (a backbone's zero padding is not structure)
# ------------------------------------------------------------------------------------------------------------

class PaddedConvEncoder(ColourEncoder):
    """Random 3x3 convolutions with zero padding, as CNN backbones have: a flat image gets border features."""

    name = "padded-conv-test-encoder"

    def __init__(self):
        super().__init__()
        import torch

        g = torch.Generator().manual_seed(0)
        self.w1 = torch.randn(16, 3, 3, 3, generator=g)
        self.w2 = torch.randn(16, 16, 3, 3, generator=g) / 4

    def encode(self, pixels):
        import torch.nn.functional as F

        x = F.relu(F.conv2d(pixels.float(), self.w1, padding=1, stride=4))
        x = F.conv2d(x, self.w2, padding=1, stride=8)
        return F.normalize(x.permute(0, 2, 3, 1), dim=-1)


@pytest.mark.parametrize("value", [0, 128, 255])
def test_a_uniform_image_is_one_segment(value):
    eng = Engine(EngineConfig(size=128, tau=0.5, device="cpu", refine=True, pamr_iters=1),
                 encoder=PaddedConvEncoder())
    flat = np.full((96, 128, 3), value, np.uint8)
    feats = eng.encoder.encode(eng.preprocess(flat).net_input[None])
    assert float(feats.std(dim=(1, 2)).max()) > 0.05             # the raw backbone features are not constant
    seg = eng.segment(flat)
    assert seg.num_segments == 1 and (seg.labels == 0).all()
    two = flat.copy()
    two[:, 64:] = (200, 30, 30) if value != 200 else (30, 30, 200)
    eng = Engine(eng.config.replace(refine=False), encoder=eng.encoder)
    assert eng.segment(two).num_segments >= 2                     # an image with structure still splits


@pytest.mark.parametrize("method,rw", [("autosc", None), ("rwncut", {"threshold": "random", "min_size": 4}),
                                       ("rwncut", {"threshold": "tree", "min_size": 4})])
@pytest.mark.parametrize("value", [0, 117, 255])
def test_a_uniform_image_is_one_segment_with_every_method(method, rw, value):
    """AutoSC bypassed the uniform-image rule (10-25 segments of an all-black image with the lite backbone) and the
    random-walk NCut kept it only for its three blank calibration levels (a grey of 30000/65535 gave 2)."""
    eng = Engine(EngineConfig(size=128, device="cpu", refine=True, pamr_iters=1, method=method, rwncut=rw),
                 encoder=PaddedConvEncoder())
    flat = np.full((96, 128, 3), value, np.uint8)
    seg = eng.segment(flat)
    assert seg.num_segments == 1 and (seg.labels == 0).all() and (seg.grid_labels == 0).all()
    assert eng.segment(flat.astype(np.uint16) * 257).num_segments == 1   # any form of a flat image


def test_readme_error_section_matches_the_code(capsys):
    from pathlib import Path

    from diffcut_engine.outputs import LOCK_NAME, SUMMARY_NAME

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Errors, unusual inputs and output folders", 1)[1].split("\n## ", 1)[0]
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    segment_help = capsys.readouterr().out
    for flag in ("--overwrite", "--resume"):
        assert flag in section and flag in segment_help
    assert f"DIR/{LOCK_NAME}" in section and SUMMARY_NAME in section
    assert "exit code 2" in section and "exit code 1" in section


def test_a_failed_video_write_is_one_error_line_and_keeps_the_frames_before(tmp_path, capsys, toy_cli, monkeypatch):
    import errno

    from diffcut_engine.video import writers

    real, calls = writers.overlay_frame, []

    def full_disk(frame, **kw):
        calls.append(frame.index)
        if len(calls) > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(frame, **kw)

    monkeypatch.setattr(writers, "overlay_frame", full_disk)
    src = make_video(tmp_path / "in.mp4")
    out = tmp_path / "out.mkv"
    code, _, err = run(["video", str(src), "-o", str(out), "--size", "64", "--no-refine", "-q"], capsys)
    line = one_error_line(err)
    assert code == 1 and "writing the output video failed: the disk is full" in line
    assert "the 5 frames before it were written" in line
    assert len(frame_times(out)) == 5                                # a valid file with the frames before


def test_resume_with_several_taus_never_reuses_a_name(three_images, tmp_path, capsys, toy_cli):
    out = tmp_path / "out"
    taus = ["--taus", "0.3,0.6"]
    assert run(["segment", str(three_images / "img0.png"), "-o", str(out), *taus, *SEG], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.glob("*.png")}
    other = tmp_path / "other"
    other.mkdir()
    _png(other / "img0.png", np.full((64, 96, 3), 90, np.uint8))
    for keep_summary in (True, False):
        if not keep_summary:
            (out / "summary.json").unlink()                     # files of a run without a summary
        code, _, err = run(["segment", str(other / "img0.png"), "-o", str(out), "--resume", *taus, *SEG], capsys)
        assert code == 0, err
        assert {n: (out / n).read_bytes() for n in before} == before
    assert (out / "img0-1_tau0.3_labels.png").is_file() and (out / "img0-2_tau0.6_labels.png").is_file()


def test_special_inputs_are_named_as_such_by_the_command_line(three_images, tmp_path, capsys, toy_cli):
    """A FIFO, a dangling link and a link loop were all "file not found" on the command line (the API named
    them; README: "is refused ... named as such")."""
    import os

    edge = tmp_path / "edge"
    edge.mkdir()
    os.mkfifo(edge / "fifo.png")
    os.symlink(edge / "gone.png", edge / "dangling.png")
    os.symlink(edge / "loop2.png", edge / "loop1.png")
    os.symlink(edge / "loop1.png", edge / "loop2.png")
    inputs = [str(edge / n) for n in ("fifo.png", "dangling.png", "loop1.png")]
    code, _, err = run(["segment", *inputs, str(three_images / "img0.png"), "-o", str(tmp_path / "out"), *SEG],
                       capsys)
    assert code == 1
    assert "fifo.png: not a regular file (a FIFO, socket or device)" in err
    assert "dangling.png: broken symbolic link" in err and "loop1.png: symbolic link loop" in err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r.get("error", "").split(": ", 1)[-1][:12] for r in summary["results"][:3]] == \
        ["not a regula", "broken symbo", "symbolic lin"]
    code, _, err = run(["segment", *inputs, "-o", str(tmp_path / "out2"), *SEG], capsys)
    assert code == 2 and "no input image exists" in err and "broken symbolic link" in err


def test_taus_that_differ_beyond_six_digits_get_their_own_files(three_images, tmp_path, capsys, toy_cli):
    """--taus named files f"{tau:g}" (6 significant digits): two close taus wrote one file set, the first result
    overwritten and summary.json listing it for both."""
    out = tmp_path / "out"
    code, _, err = run(["segment", str(three_images / "img0.png"), "-o", str(out), "--taus",
                        "0.0340443,0.03404432", "--save-npy", *SEG], capsys)
    assert code == 0, err
    assert (out / "img0_tau0.0340443_labels.npy").is_file() and (out / "img0_tau0.03404432_labels.npy").is_file()
    results = json.loads((out / "summary.json").read_text())["results"]
    assert len({tuple(r["outputs"]) for r in results}) == 2


def test_a_damaged_summary_cannot_be_resumed_but_can_be_overwritten(three_images, tmp_path, capsys, toy_cli):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text('{"results": [{"input": 3, "outputs": 7}')   # cut short
    code, _, err = run(["segment", str(three_images / "img0.png"), "-o", str(out), "--resume", *SEG], capsys)
    assert code == 2 and "cannot resume" in one_error_line(err)
    code, _, err = run(["segment", str(three_images / "img0.png"), "-o", str(out), "--overwrite", *SEG], capsys)
    assert code == 0, err
    assert len(json.loads((out / "summary.json").read_text())["results"]) == 1
