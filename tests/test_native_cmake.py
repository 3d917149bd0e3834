"""The CMake build of the C++ core (csrc/) for C and C++ users: configure and build it (shared and static
libraries, the ctest tests, the example program) against the scipy-openblas32 wheel, run ctest, and compare the
example program's labels with the numpy path.

Skipped only where cmake or a C++ compiler is missing. The build takes ~20 s on 2 cores.

Parity: given the same affinity W, the example's labels equal the numpy dense path's (partitions and ids) on
realistic and planted grids. From features, W comes from the wheel's OpenBLAS ``ssyrk``, which may be another
OpenBLAS build than SciPy's, so W agrees to float32 rounding; the labels from features are compared on the
planted family, whose splits are far from any threshold.
"""

import os
import shutil
import subprocess

import numpy as np
import pytest

from diffcut_engine.graph import affinity_from_tokens, l2_normalize, ncut_tree
from diffcut_engine.graph.affinity import as_token_matrix
from planted import planted_features, planted_regions
from realistic import FAMILIES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAUS = (0.2, 0.35, 0.5, 0.65, 0.8)


def _build(build, *options):
    """Configure and build csrc/ into ``build`` against the scipy-openblas32 wheel."""
    cmake = shutil.which("cmake")
    if cmake is None or not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        pytest.skip("cmake or a C++ compiler is not installed")
    try:
        import scipy_openblas32
    except ImportError:
        pytest.fail("the scipy-openblas32 wheel (BLAS/LAPACK of the CMake build) is missing: "
                    "pip install scipy-openblas32 (it is in the test extra)")
    config = [cmake, "-S", os.path.join(ROOT, "csrc"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
              f"-DDIFFCUT_SCIPY_OPENBLAS={os.path.dirname(scipy_openblas32.__file__)}", *options]
    if shutil.which("ninja"):
        config += ["-G", "Ninja"]
    for cmd in (config, [cmake, "--build", str(build), "-j", "2"]):
        run = subprocess.run(cmd, capture_output=True, text=True)
        assert run.returncode == 0, f"{' '.join(cmd)} failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    return build


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("csrc-build"))


def _env():
    return dict(os.environ, OPENBLAS_NUM_THREADS="1")


def _ctest(build):
    run = subprocess.run(["ctest", "--test-dir", str(build), "--output-on-failure"], capture_output=True,
                         text=True, env=_env())
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "100% tests passed" in run.stdout


def test_ctest(build_dir):
    _ctest(build_dir)


@pytest.mark.slow
def test_ctest_under_address_and_undefined_behaviour_sanitizers(tmp_path):
    """The C and C++ tests (C API error paths included) built with -fsanitize=address,undefined (~40 s)."""
    _ctest(_build(tmp_path / "asan", "-DDIFFCUT_SANITIZE=ON", "-DDIFFCUT_BUILD_EXAMPLES=OFF",
                  "-DCMAKE_BUILD_TYPE=Debug"))


def _segment(build_dir, tmp_path, array, *args):
    src, dst = tmp_path / "in.npy", tmp_path / "out.npy"
    np.save(src, array)
    run = subprocess.run([str(build_dir / "diffcut_segment"), str(src), str(dst), *args], capture_output=True,
                         text=True, env=_env())
    assert run.returncode == 0, run.stderr
    return np.load(dst)


def _reference(f, compat):
    tree = ncut_tree(f, tau_max=max(TAUS), compat=compat, solver="dense", graph_backend="numpy")
    return np.stack([tree.cut(t) for t in TAUS])


@pytest.mark.parametrize("family,photo,h,w", [("lab", "astronaut", 16, 16), ("filters", "coffee", 12, 20),
                                              ("lab", "rocket", 20, 14)])
def test_example_matches_numpy_on_the_same_affinity(build_dir, tmp_path, family, photo, h, w):
    f = FAMILIES[family](photo, h, w)
    W = affinity_from_tokens(l2_normalize(as_token_matrix(f)[0]), 10.0)
    for compat in ("official", "clean"):
        got = _segment(build_dir, tmp_path, W, "--affinity", "--compat", compat, "--solver", "dense", "--tau",
                       ",".join(map(str, TAUS)))
        assert got.dtype == np.int32 and got.shape == (len(TAUS), h * w)
        assert np.array_equal(got, _reference(f, compat).reshape(len(TAUS), h * w)), compat


@pytest.mark.parametrize("kind,h,w", [("quadrants", 12, 15), ("disc", 16, 16), ("stripes", 10, 24)])
def test_example_from_features(build_dir, tmp_path, kind, h, w):
    f = planted_features(planted_regions(h, w, kind), noise=0.5, seed=1)
    for compat in ("official", "clean"):
        got = _segment(build_dir, tmp_path, f, "--compat", compat, "--solver", "dense", "--tau",
                       ",".join(map(str, TAUS)))
        assert got.shape == (len(TAUS), h, w)
        assert np.array_equal(got, _reference(f, compat)), compat
    # one tau: a (h, w) map; bad input: a one-line error and exit code 1
    assert _segment(build_dir, tmp_path, f, "--tau", "0.5").shape == (h, w)
    bad = f.copy()
    bad[1, 2, 3] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    run = subprocess.run([str(build_dir / "diffcut_segment"), str(tmp_path / "bad.npy"), str(tmp_path / "x.npy")],
                         capture_output=True, text=True, env=_env())
    assert run.returncode == 1 and "NaN" in run.stderr and run.stderr.count("\n") == 1


def test_capi_batch_runs_openblas_single_threaded_and_restores_it(build_dir):
    """diffcut_tree_build_batch on 2 threads: OpenBLAS (the scipy-openblas32 wheel the build links) single-threaded
    during the call, its thread count restored after; the trees are those of one thread."""
    import sys

    run = subprocess.run([str(build_dir / "test_core")], capture_output=True, text=True, env=_env())
    assert run.returncode == 0 and "BLAS thread control found" in run.stdout, run.stdout + run.stderr
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from bench_capi_batch import build_batch, load, openblas_controls

    lib = load(str(build_dir / "libdiffcut.so"))
    controls = openblas_controls(lib)
    assert controls is not None
    get, set_ = controls
    grids = [planted_features(planted_regions(12, 14, kind), noise=0.5, seed=s)
             for s, kind in enumerate(("quadrants", "disc", "stripes", "quadrants"))]
    before = get()
    try:
        set_(2)
        want = get()
        _, one = build_batch(lib, grids, 1)
        assert get() == want
        _, two = build_batch(lib, grids, 2)
        assert get() == want
    finally:
        set_(before)
    assert all(np.array_equal(a, b) for a, b in zip(one, two))


def test_capi_bound_to_scipys_blas_gives_the_python_affinity_bit_for_bit(build_dir):
    """diffcut_bind_lapack + diffcut_bind_sgemm/dgemm/dstemr to SciPy's functions: the C API's W is the Python
    engine's bit for bit from 256 tokens too (its second Gram band is an sgemm call, which diffcut_bind_lapack alone
    left on the linked wheel's), in a process where the library is loaded beside SciPy."""
    import ctypes

    from diffcut_engine.graph._blas import scipy_blas_addresses
    from diffcut_engine.graph.affinity import affinity_from_tokens, l2_normalize

    lib = ctypes.CDLL(str(build_dir / "libdiffcut.so"))
    addr = scipy_blas_addresses()
    vp = ctypes.c_void_p
    lib.diffcut_bind_lapack.argtypes = [vp, vp, vp]
    for name in ("sgemm", "dgemm", "dstemr"):
        getattr(lib, "diffcut_bind_" + name).argtypes = [vp]
    lib.diffcut_affinity.argtypes = [vp, ctypes.c_int64, ctypes.c_int64, ctypes.c_double, vp, ctypes.c_int64]
    assert lib.diffcut_bind_lapack(addr["ssyrk"], addr["dsyevr"], addr["dsymv"]) == 0
    for name in ("sgemm", "dgemm", "dstemr"):
        assert getattr(lib, "diffcut_bind_" + name)(addr[name]) == 0
    rng = np.random.default_rng(4)
    for n, c in ((200, 32), (400, 64), (1024, 13)):
        x = rng.standard_normal((n, c)).astype(np.float32)  # (diffcut_affinity normalises them)
        out = np.empty((n, n), np.float32)
        assert lib.diffcut_affinity(x.ctypes.data, n, c, 10.0, out.ctypes.data, out.size) == 0
        assert np.array_equal(out, affinity_from_tokens(l2_normalize(x), 10.0)), n
    assert lib.diffcut_bind_sgemm(None) == 0  # optional: NULL allowed (one ssyrk call then)


def _segment_file(build_dir, path, out, *args):
    run = subprocess.run([str(build_dir / "diffcut_segment"), str(path), str(out), *args], capture_output=True,
                         text=True, env=_env())
    return run.returncode, run.stderr


def test_example_reads_every_npy_layout(build_dir, tmp_path):
    """Features as numpy writes them: float64, Fortran order, big-endian, float16 (e.g. a TensorRT fp16 encoder's
    output): the same labels as the float32 C-order file holding the same values."""
    h, w = 10, 14
    f = planted_features(planted_regions(h, w, "stripes"), noise=0.5, seed=3)
    ref = _segment(build_dir, tmp_path, f, "--tau", ",".join(map(str, TAUS)))
    for variant in (f.astype(np.float64), np.asfortranarray(f), f.astype(">f4"), f.astype(">f8"),
                    np.asfortranarray(f.astype(">f8")), np.asfortranarray(f.transpose(1, 0, 2)).transpose(1, 0, 2)):
        np.save(tmp_path / "v.npy", variant)
        code, err = _segment_file(build_dir, tmp_path / "v.npy", tmp_path / "v_out.npy", "--tau",
                                  ",".join(map(str, TAUS)))
        assert code == 0, err
        assert np.array_equal(np.load(tmp_path / "v_out.npy"), ref), (variant.dtype, variant.flags.f_contiguous)
    # float16 features, with negative, subnormal and large half values among them: as numpy's float16 -> float32
    g = f * np.float32(30.0)
    g[0, 0, :4] = [6e-8, -6e-8, 3e-5, 65000.0]
    half = g.astype(np.float16)
    want = _segment(build_dir, tmp_path, half.astype(np.float32), "--tau", ",".join(map(str, TAUS)))
    for dtype in ("<f2", ">f2"):
        assert np.array_equal(_segment(build_dir, tmp_path, half.astype(dtype), "--tau", ",".join(map(str, TAUS))),
                              want), dtype
    # and an affinity in float16 (subnormal halves and a zero among the weights)
    W = affinity_from_tokens(l2_normalize(as_token_matrix(f)[0]), 10.0).astype(np.float16)
    W.flat[:3] = [6e-8, 1e-5, 0.0]  # subnormal halves and a zero among the weights
    W = np.minimum(W, W.T)
    want = _segment(build_dir, tmp_path, W.astype(np.float32), "--affinity", "--tau", ",".join(map(str, TAUS)))
    for dtype in ("<f2", ">f2"):
        got = _segment(build_dir, tmp_path, W.astype(dtype), "--affinity", "--tau", ",".join(map(str, TAUS)))
        assert np.array_equal(got, want), dtype


@pytest.mark.parametrize("args,message", [
    (("--tau", "abc"), "--tau: 'abc' is not a number"),
    (("--tau", "0.5,"), "--tau: empty item"),
    (("--tau", "0.5x"), "--tau: '0.5x' is not a number"),
    (("--alpha", ""), "--alpha: '' is not a number"),
    (("--threads", "2.5"), "--threads: '2.5' is not an integer"),
    (("--pamr-iters", "1e3"), "--pamr-iters: '1e3' is not an integer"),
    (("--work-size", "10xa"), "--work-size: 'a' is not an integer"),
    (("--work-size", "10"), "--work-size takes HxW"),
    (("--tau",), "--tau needs a value"),
    # values the library refuses: named as options, not blamed on the features file
    (("--pamr-iters", "-1"), "invalid option: DIFFCUT_ERROR_INVALID_ARGUMENT: iters must be in [0, 10000]"),
    (("--threads", "-1"), "invalid option"),
    (("--work-size", "0x10"), "invalid option"),
    (("--alpha", "0"), "invalid option"),
    (("--tau", "-1"), "invalid option"),
])
def test_example_option_errors(build_dir, tmp_path, args, message):
    """A malformed option value: exit code 1 and one line naming the option (no exception text like 'stod')."""
    f = planted_features(planted_regions(8, 8, "quadrants"), noise=0.5, seed=1)
    np.save(tmp_path / "f.npy", f)
    code, err = _segment_file(build_dir, tmp_path / "f.npy", tmp_path / "o.npy", *args)
    assert code == 1 and err.count("\n") == 1 and message in err, err


def test_example_unknown_option_and_failed_write(build_dir, tmp_path):
    """An unknown option is named (then the usage, exit 2); labels that cannot be written (a full disk: /dev/full)
    fail with exit 1 however small the file (the stream's buffer held them until the close)."""
    f = planted_features(planted_regions(8, 8, "quadrants"), noise=0.5, seed=1)
    np.save(tmp_path / "f.npy", f)
    code, err = _segment_file(build_dir, tmp_path / "f.npy", tmp_path / "o.npy", "--bogus")
    assert code == 2 and "unknown option --bogus" in err.splitlines()[0], err
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    for name in ("full.npy", "full.png"):
        (tmp_path / name).symlink_to("/dev/full")
        code, err = _segment_file(build_dir, tmp_path / "f.npy", tmp_path / name)
        if name.endswith(".png") and "zlib" in err:
            continue  # (an example built without zlib)
        assert code == 1 and "cannot write" in err and err.count("\n") == 1, (name, err)


def test_example_file_errors(build_dir, tmp_path):
    f = planted_features(planted_regions(8, 8, "quadrants"), noise=0.5, seed=1)
    np.save(tmp_path / "f.npy", f)
    cases = [
        ((tmp_path / "f.npy", tmp_path / "o.txt"), "written as .npy or .png"),
        ((tmp_path / "f.npy", tmp_path / "o.npy", "--image", tmp_path / "photo.jpg"), "as .png or .npy"),
        ((tmp_path / "f.npy", tmp_path / "o.npy", "--image", tmp_path / "rgba.npy"), "must hold an RGB image"),
        ((tmp_path / "ints.npy", tmp_path / "o.npy"), "dtype <i4"),
        ((tmp_path / "short.npy", tmp_path / "o.npy"), "truncated"),
        ((tmp_path / "missing.npy", tmp_path / "o.npy"), "cannot open"),
        # a header claiming 1.6 GB of data in a small file: refused before the buffer is allocated
        ((tmp_path / "claims.npy", tmp_path / "o.npy"), "header claims 1600000000 bytes of data"),
        ((tmp_path / "empty.npy", tmp_path / "o.npy"), "height must be positive"),
        ((tmp_path / "nan.npy", tmp_path / "o.npy"), f"{tmp_path / 'nan.npy'}: DIFFCUT_ERROR_NON_FINITE"),
    ]
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (20000, 20000, 1), }"
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    (tmp_path / "claims.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header
                                          + bytes(100))
    np.save(tmp_path / "empty.npy", np.zeros((0, 5, 8), np.float32))
    bad = f.copy()
    bad[1, 2, 3] = np.inf
    np.save(tmp_path / "nan.npy", bad)
    np.save(tmp_path / "rgba.npy", np.zeros((8, 8, 4), np.uint8))
    np.save(tmp_path / "ints.npy", np.zeros((8, 8, 4), np.int32))
    np.save(tmp_path / "full.npy", f)
    (tmp_path / "short.npy").write_bytes((tmp_path / "full.npy").read_bytes()[:300])
    for args, message in cases:
        code, err = _segment_file(build_dir, *args)
        assert code == 1 and err.count("\n") == 1 and message in err, (args, err)


def test_example_image_layouts(build_dir, tmp_path):
    """The image as (3, H, W) or (H, W, 3) floats, (H, W, 3) or gray (H, W) uint8: one refinement."""
    h, w, H, W = 8, 10, 40, 50
    f = planted_features(planted_regions(h, w, "quadrants"), noise=0.5, seed=4)
    rng = np.random.default_rng(0)
    rgb = rng.random((H, W, 3)).astype(np.float32)
    gray = (rng.random((H, W)) * 255).astype(np.uint8)
    np.save(tmp_path / "hwc.npy", rgb)
    np.save(tmp_path / "chw.npy", np.ascontiguousarray(rgb.transpose(2, 0, 1)))
    np.save(tmp_path / "gray.npy", gray)
    np.save(tmp_path / "gray3.npy", np.repeat(gray[..., None], 3, axis=2))
    out = {}
    for name in ("hwc", "chw", "gray", "gray3"):
        out[name] = _segment(build_dir, tmp_path, f, "--tau", "0.5", "--image", str(tmp_path / f"{name}.npy"))
        assert out[name].shape == (H, W)
    assert np.array_equal(out["hwc"], out["chw"]) and np.array_equal(out["gray"], out["gray3"])


def test_installed_package_links_and_runs_through_find_package(build_dir, tmp_path):
    """cmake --install, then a consumer project with find_package(diffcut) and diffcut::diffcut (the README's
    way): the installed library had no run path to the wheel's OpenBLAS, so the consumer did not link
    (undefined scipy_ssyrk_, ...) nor start."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler")
    prefix = tmp_path / "prefix"
    run = subprocess.run(["cmake", "--install", str(build_dir), "--prefix", str(prefix)], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    with open(os.path.join(ROOT, "README.md")) as fh:
        block = fh.read().split("<!-- c-api-example -->", 1)[1].split("```c\n", 1)[1].split("```", 1)[0]
    app = tmp_path / "app"
    app.mkdir()
    (app / "segment.c").write_text(block)
    (app / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.16)\nproject(app C CXX)\nfind_package(diffcut REQUIRED)\n"
        "add_executable(app segment.c)\ntarget_link_libraries(app diffcut::diffcut)\n")
    _build_consumer = [["cmake", "-S", str(app), "-B", str(app / "build"), f"-DCMAKE_PREFIX_PATH={prefix}"],
                       ["cmake", "--build", str(app / "build")]]
    for cmd in _build_consumer:
        run = subprocess.run(cmd, capture_output=True, text=True)
        assert run.returncode == 0, f"{' '.join(cmd)}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    env = {k: v for k, v in _env().items() if k != "LD_LIBRARY_PATH"}
    run = subprocess.run([str(app / "build" / "app")], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "libdiffcut 0.1.0: 2 segments"


def test_readme_c_example_compiles_and_runs(build_dir, tmp_path):
    """The README's "Use from C and C++" example, compiled as the README says and run."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler")
    with open(os.path.join(ROOT, "README.md")) as fh:
        text = fh.read()
    block = text.split("<!-- c-api-example -->", 1)[1].split("```c\n", 1)[1].split("```", 1)[0]
    src = tmp_path / "segment.c"
    src.write_text(block)
    exe = tmp_path / "segment"
    run = subprocess.run([cc, str(src), "-I", os.path.join(ROOT, "csrc", "include"), "-L", str(build_dir),
                          "-ldiffcut", f"-Wl,-rpath,{build_dir}", "-o", str(exe)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, env=_env())
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "libdiffcut 0.1.0: 2 segments"


def test_example_refines_to_the_image_size(build_dir, tmp_path):
    """--image: the labels refined to the image's size as the engine's "full" refinement (concept assignment, PAMR,
    median); the image as (3, H, W) float32 or (H, W, 3) uint8. Agreement >= 99.9 %: concept assignment sums its
    two small matrix products in its own order where torch calls a GEMM (tests/test_native_refine.py)."""
    import torch
    import torch.nn.functional as F
    from skimage import data

    from diffcut_engine import refine

    h, w, H, W = 12, 16, 60, 80
    f = planted_features(planted_regions(h, w, "quadrants"), noise=0.5, seed=2)
    rgb = F.interpolate(torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float(), size=(H, W),
                        mode="bilinear", align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
    img = rgb.float() / 255                                       # what the uint8 path computes
    np.save(tmp_path / "img_u8.npy", rgb.permute(1, 2, 0).numpy())
    np.save(tmp_path / "img.npy", img.numpy())
    grid = _reference(f, "official")[TAUS.index(0.5)]
    k = int(grid.max()) + 1
    feats = torch.from_numpy(l2_normalize(as_token_matrix(f)[0]).reshape(h, w, -1))
    assigned = refine.concept_assign(feats, torch.from_numpy(grid), (H, W), num_segments=k)
    ref = refine.refine_at(img, assigned, num_segments=k, iters=10, dilations=(1, 2, 4, 8), backend="torch").numpy()
    a = _segment(build_dir, tmp_path, f, "--tau", "0.5", "--solver", "dense", "--image", str(tmp_path / "img.npy"))
    b = _segment(build_dir, tmp_path, f, "--tau", "0.5", "--solver", "dense", "--image", str(tmp_path / "img_u8.npy"),
                 "--threads", "2")
    assert a.dtype == np.int32 and a.shape == (H, W) and np.array_equal(a, b)
    assert k > 1 and (a == ref).mean() >= 0.999
    c = _segment(build_dir, tmp_path, f, "--tau", "0.3,0.5", "--image", str(tmp_path / "img.npy"), "--pamr-iters",
                 "0", "--pamr-dilations", "1,2", "--no-median")
    assert c.shape == (2, H, W)
    run = subprocess.run([str(build_dir / "diffcut_segment"), str(tmp_path / "in.npy"), str(tmp_path / "x.npy"),
                          "--image", str(tmp_path / "in.npy")], capture_output=True, text=True, env=_env())
    assert run.returncode == 1 and "(3, H, W)" in run.stderr


def _png_or_skip(build_dir, tmp_path):
    """Skip when this build of the example has no PNG support (CMake found no zlib)."""
    np.save(tmp_path / "f.npy", np.ones((2, 2, 3), np.float32))
    run = subprocess.run([str(build_dir / "diffcut_segment"), str(tmp_path / "f.npy"), str(tmp_path / "probe.png")],
                         capture_output=True, text=True, env=_env())
    if run.returncode != 0 and "only with zlib" in run.stderr:
        pytest.skip("the example was built without zlib (no PNG support)")
    assert run.returncode == 0, run.stderr


def test_example_reads_png_images_and_writes_png_labels(build_dir, tmp_path):
    """--image IMAGE.png (RGB, RGBA, palette, 8- and 16-bit gray) gives the labels of the same pixels as .npy; a
    LABELS.png output holds the label ids (8-bit gray, 16-bit above 255 labels), read back by PIL."""
    from PIL import Image
    from skimage import data

    _png_or_skip(build_dir, tmp_path)
    h, w, H, W = 12, 16, 45, 61
    f = planted_features(planted_regions(h, w, "quadrants"), noise=0.5, seed=3)
    rgb = np.asarray(Image.fromarray(data.astronaut()).resize((W, H)))
    np.save(tmp_path / "img.npy", rgb)
    want = _segment(build_dir, tmp_path, f, "--tau", "0.5", "--image", str(tmp_path / "img.npy"))
    assert want.shape == (H, W) and want.max() >= 1
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb, np.full((H, W), 200, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb).save(tmp_path / "rgb_filtered.png", optimize=True)   # PIL picks row filters
    for name in ("rgb.png", "rgba.png", "rgb_filtered.png"):
        got = _segment(build_dir, tmp_path, f, "--tau", "0.5", "--image", str(tmp_path / name))
        assert np.array_equal(got, want), name
    # palette and gray images: the same labels as their RGB expansion given as .npy
    pal = Image.fromarray(rgb).quantize(colors=32)
    pal.save(tmp_path / "pal.png")
    np.save(tmp_path / "pal.npy", np.asarray(pal.convert("RGB")))
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "gray16.png")   # 16-bit: high byte = gray
    np.save(tmp_path / "gray.npy", np.repeat(gray[..., None], 3, axis=2))
    for png_name, npy_name in (("pal.png", "pal.npy"), ("gray.png", "gray.npy"), ("gray16.png", "gray.npy")):
        got = _segment(build_dir, tmp_path, f, "--tau", "0.5", "--image", str(tmp_path / png_name))
        ref = _segment(build_dir, tmp_path, f, "--tau", "0.5", "--image", str(tmp_path / npy_name))
        assert np.array_equal(got, ref), png_name
    # PNG output: the same ids as the .npy output, 8-bit below 256 labels
    out = tmp_path / "labels.png"
    run = subprocess.run([str(build_dir / "diffcut_segment"), str(tmp_path / "in.npy"), str(out), "--tau", "0.5",
                          "--image", str(tmp_path / "rgb.png")], capture_output=True, text=True, env=_env())
    assert run.returncode == 0, run.stderr
    back = Image.open(out)
    assert back.mode == "L" and np.array_equal(np.asarray(back), want)
    # more than 256 labels: 16-bit gray
    noise = np.random.default_rng(0).standard_normal((24, 24, 8)).astype(np.float32)
    many = _segment(build_dir, tmp_path, noise, "--tau", "1.5")
    assert many.max() >= 256
    run = subprocess.run([str(build_dir / "diffcut_segment"), str(tmp_path / "in.npy"), str(out), "--tau", "1.5"],
                         capture_output=True, text=True, env=_env())
    assert run.returncode == 0, run.stderr
    assert np.array_equal(np.asarray(Image.open(out)).astype(np.int64), many)


def test_example_png_errors(build_dir, tmp_path):
    from PIL import Image

    _png_or_skip(build_dir, tmp_path)
    f = planted_features(planted_regions(8, 8, "quadrants"), noise=0.5, seed=1)
    np.save(tmp_path / "in.npy", f)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "ok.png")
    raw = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "corrupt.png").write_bytes(raw[:40] + bytes([raw[40] ^ 0xFF]) + raw[41:])
    (tmp_path / "text.png").write_bytes(b"not a png at all")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "interlaced.png", interlace=1)
    (tmp_path / "no_end.png").write_bytes(raw[:-12])                         # cut before its IEND chunk
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    (tmp_path / "claims.png").write_bytes(raw[:8] + chunk(b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0))
                                          + chunk(b"IDAT", zlib.compress(bytes(10))) + chunk(b"IEND", b""))
    exe = str(build_dir / "diffcut_segment")
    cases = [(["--image", str(tmp_path / "no_end.png")], "truncated PNG"),
             (["--image", str(tmp_path / "claims.png")], "cannot hold 40000 x 40000 pixels"),
             (["--image", str(tmp_path / "corrupt.png")], "corrupt PNG"),
             (["--image", str(tmp_path / "text.png")], "not a PNG"),
             (["--image", str(tmp_path / "missing.png")], "cannot open"),
             (["--tau", "0.3,0.5"], "one (h, w) label map")]
    if Image.open(tmp_path / "interlaced.png").info.get("interlace"):
        cases.append((["--image", str(tmp_path / "interlaced.png")], "interlaced"))
    for args, message in cases:
        run = subprocess.run([exe, str(tmp_path / "in.npy"), str(tmp_path / "o.png"), *args], capture_output=True,
                             text=True, env=_env())
        assert run.returncode == 1 and message in run.stderr and run.stderr.count("\n") == 1, (args, run.stderr)


def test_example_refines_at_a_working_size(build_dir, tmp_path):
    """--work-size HxW: PAMR at the working size and back edge-aware (the engine's demo/eval presets), as
    refine.refine_at(work_size=...) on the concept labels (>= 99.9 %: concept assignment's summation order)."""
    import torch
    from PIL import Image
    from skimage import data

    from diffcut_engine import refine

    h, w, H, W, work = 12, 16, 120, 160, (100, 128)
    f = planted_features(planted_regions(h, w, "quadrants"), noise=0.5, seed=4)
    rgb = np.array(Image.fromarray(data.astronaut()).resize((W, H)))
    np.save(tmp_path / "img.npy", rgb)
    grid = _reference(f, "official")[TAUS.index(0.5)]
    k = int(grid.max()) + 1
    img = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    feats = torch.from_numpy(l2_normalize(as_token_matrix(f)[0]).reshape(h, w, -1))
    assigned = refine.concept_assign(feats, torch.from_numpy(grid), (H, W), num_segments=k)
    ref = refine.refine_at(img, assigned, work_size=work, num_segments=k, iters=10, dilations=(1, 2, 4, 8),
                           backend="torch").numpy()
    got = _segment(build_dir, tmp_path, f, "--tau", "0.5", "--solver", "dense", "--image", str(tmp_path / "img.npy"),
                   "--work-size", f"{work[0]}x{work[1]}")
    assert k > 1 and got.shape == (H, W) and (got == ref).mean() >= 0.999
    run = subprocess.run([str(build_dir / "diffcut_segment"), str(tmp_path / "in.npy"), str(tmp_path / "x.npy"),
                          "--image", str(tmp_path / "img.npy"), "--work-size", "0x64"], capture_output=True,
                         text=True, env=_env())
    assert run.returncode == 1 and "working size" in run.stderr
