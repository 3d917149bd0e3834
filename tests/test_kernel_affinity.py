"""Parity of the fused Triton affinity kernel (``diffcut_engine.kernels.affinity``) with its torch reference.

Triton decides at decoration time, i.e. when the kernel module is imported, whether the kernels are compiled or
interpreted on the CPU (``TRITON_INTERPRET=1``). The interpreter runs therefore happen in one fresh subprocess
(started once per session) that reads the seeded inputs from a file and writes the kernel's outputs back; the
comparisons happen here. Tests marked ``gpu`` run the compiled kernel on a CUDA device and are skipped elsewhere.

Tolerances, with ``precision="ieee"``: W rtol 1e-5 / atol 1e-6 (rtol 2e-5 where C = 1280: the power alpha = 10
multiplies the fp32 rounding of a 1280-term dot product by ~10 near W = 1), degrees rtol 1e-5 (2e-5).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import diffcut_engine.kernels.affinity as kaff
from diffcut_engine.errors import BackendUnavailableError, InputError
from diffcut_engine.graph.affinity import affinity_from_tokens, l2_normalize

HAS_TRITON = kaff.tl is not None


def clustered_tokens(n: int, c: int, *, seed: int, clusters: int = 4) -> torch.Tensor:
    """(n, c) float32 tokens around a few random centres: similarities spread over [min, 1], so that W is not
    (almost) the identity, as it is for plain Gaussian tokens in high dimension."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, c, generator=g)
    labels = torch.randint(0, clusters, (n,), generator=g)
    scale = torch.rand(n, 1, generator=g) * 3 + 0.1           # un-normalised on purpose
    return ((centres[labels] + 0.6 * torch.randn(n, c, generator=g)) * scale).float()


def _with_zero_row(x: torch.Tensor, row: int) -> torch.Tensor:
    x = x.clone()
    x[row] = 0
    return x


# name -> (tokens, alpha, fused_affinity keyword options, rtol)
def _interpreter_cases() -> dict:
    return {
        "n37_c3_a10": (clustered_tokens(37, 3, seed=1), 10.0, {}, 1e-5),
        "n100_c64_a2.5_zero_row": (_with_zero_row(clustered_tokens(100, 64, seed=2), 5), 2.5, {}, 1e-5),
        "n100_c64_a10_block32": (clustered_tokens(100, 64, seed=3), 10.0, {"block": 32}, 1e-5),  # 4x4 tiles, ragged
        "n257_c1_a1": (clustered_tokens(257, 1, seed=4), 1.0, {}, 1e-5),
        "n257_c64_a10": (clustered_tokens(257, 64, seed=5), 10.0, {}, 1e-5),       # 2x2 tiles of 256, 1 row left
        "n70_c1280_a10": (clustered_tokens(70, 1280, seed=6), 10.0, {}, 2e-5),
        "n200_c1280_a2.5_block64": (clustered_tokens(200, 1280, seed=7), 2.5, {"block": 64}, 2e-5),
        "n4096_c16_a10": (clustered_tokens(4096, 16, seed=8), 10.0, {}, 1e-5),     # ~15 s in the interpreter
        "transposed_input": (clustered_tokens(64, 90, seed=9).T, 10.0, {}, 1e-5),  # non-contiguous (C, N).T view
        "float64_input": (clustered_tokens(50, 8, seed=10).double(), 10.0, {}, 1e-5),
        "tf32_option": (clustered_tokens(50, 8, seed=11), 10.0, {"precision": "tf32"}, 1e-5),  # numpy: no tf32
        "constant_features": (torch.ones(9, 5), 10.0, {}, 0.0),
        "all_zero_tokens": (torch.zeros(6, 3), 10.0, {}, 0.0),
        "single_token": (torch.randn(1, 8), 10.0, {}, 0.0),
    }


_INTERPRETER_SCRIPT = textwrap.dedent("""
    import logging, sys
    import torch
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    import diffcut_engine.kernels.affinity as kaff
    cases = torch.load(sys.argv[1])
    out = {"interpreted": kaff.triton_interpreted(), "results": {}}
    for name, (x, alpha, opts, _) in cases.items():
        out["results"][name] = kaff.fused_affinity(x, alpha, **opts)
    x, alpha, _, _ = cases["n37_c3_a10"]
    out["dispatched"] = kaff.affinity_with_degrees(x, alpha)
    # The pass-1 autotuner, with a benchmark that leaves the min/max buffer as a trial whose rounding differs
    # would: the buffer must be reset before the real launch.
    at = kaff.gram_minmax_autotuned
    trials = []
    def bench(kernel_call, quantiles):
        kernel_call()
        at.nargs["minmax_ptr"][0], at.nargs["minmax_ptr"][1] = -5.0, 5.0
        trials.append(at.nargs["minmax_ptr"].clone())
        return [float(len(trials))] * 3
    at.do_bench = bench
    n, c = 100, 64
    x = cases["n100_c64_a10_block32"][0]
    inv = 1 / x.norm(dim=1).clamp_min(1e-12)
    s, mm = torch.empty(n, n), torch.tensor([float("inf"), float("-inf")])
    at[lambda meta: (kaff.triton.cdiv(n, meta["BLOCK"]),) * 2](x, inv, s, mm, n, c, x.stride(0), x.stride(1),
                                                              kaff.n_bucket(n), PRECISION="ieee")
    out["autotune"] = {"trials": len(trials), "minmax": mm, "s": s, "best": at.best_config.kwargs}
    torch.save(out, sys.argv[2])
""")


@pytest.fixture(scope="module")
def interpreter_run(tmp_path_factory):
    """Run every interpreter case in one fresh ``TRITON_INTERPRET=1`` subprocess; return (cases, outputs, log)."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    folder = tmp_path_factory.mktemp("kernel_affinity")
    cases = _interpreter_cases()
    torch.save(cases, folder / "cases.pt")
    proc = subprocess.run([sys.executable, "-c", _INTERPRETER_SCRIPT, str(folder / "cases.pt"), str(folder / "out.pt")],
                          env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return cases, torch.load(folder / "out.pt"), proc.stderr


# ------------------------------------------------------------------------------------------------------------
# Interpreter parity (CPU)
# ------------------------------------------------------------------------------------------------------------

def test_interpreter_subprocess_really_interprets(interpreter_run):
    _, out, log = interpreter_run
    assert out["interpreted"] is True
    # the dispatcher took the Triton path (the kernels were built for the interpreter) and said so
    assert "Triton kernel (interpreter)" in log
    w_ref, d_ref = out["results"]["n37_c3_a10"]
    w, d = out["dispatched"]
    assert torch.equal(w, w_ref) and torch.equal(d, d_ref)


@pytest.mark.parametrize("name", [k for k in _interpreter_cases() if k not in
                                  ("constant_features", "all_zero_tokens", "single_token")])
def test_interpreter_matches_reference(interpreter_run, name):
    cases, out, _ = interpreter_run
    x, alpha, _, rtol = cases[name]
    w, d = out["results"][name]
    w_ref, d_ref = kaff.affinity_reference(x, alpha)
    n = x.shape[0]
    assert w.shape == (n, n) and d.shape == (n,) and w.dtype == torch.float32 and d.dtype == torch.float64
    torch.testing.assert_close(w, w_ref, rtol=rtol, atol=1e-6)
    torch.testing.assert_close(d, d_ref, rtol=rtol, atol=1e-6)
    # structural guarantees of the kernel: exactly symmetric, exact 0 (least similar pair) and exact 1 (max)
    assert torch.equal(w, w.T)
    assert w.min().item() == 0.0 and w.max().item() == 1.0


def test_interpreter_zero_row_is_isolated_but_for_the_shift(interpreter_run):
    """A zero token has S = 0 to everyone, like the reference (F.normalize keeps it zero)."""
    cases, out, _ = interpreter_run
    x, alpha, _, _ = cases["n100_c64_a2.5_zero_row"]
    w, _ = out["results"]["n100_c64_a2.5_zero_row"]
    w_ref, _ = kaff.affinity_reference(x, alpha)
    row = w[5]
    assert torch.allclose(row, row[0].expand_as(row))  # S[5, :] == 0 everywhere -> one value
    torch.testing.assert_close(row, w_ref[5], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["constant_features", "all_zero_tokens", "single_token"])
def test_interpreter_degenerate_cases_are_all_ones(interpreter_run, name):
    cases, out, _ = interpreter_run
    x, alpha, _, _ = cases[name]
    w, d = out["results"][name]
    n = x.shape[0]
    assert torch.equal(w, torch.ones(n, n)) and torch.equal(d, torch.full((n,), float(n), dtype=torch.float64))
    w_ref, d_ref = kaff.affinity_reference(x, alpha)
    assert torch.equal(w_ref, w) and torch.equal(d_ref, d)


# ------------------------------------------------------------------------------------------------------------
# Reference vs the numpy graph stage
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,c,alpha,rtol", [(37, 3, 10.0, 1e-5), (100, 64, 2.5, 1e-5), (257, 1, 1.0, 1e-5),
                                            (70, 1280, 10.0, 2e-5), (300, 64, 10.0, 1e-5)])
def test_reference_matches_numpy_graph_stage(n, c, alpha, rtol):
    x = _with_zero_row(clustered_tokens(n, c, seed=n + c), n // 2)
    w, d = kaff.affinity_reference(x, alpha)
    w_np = affinity_from_tokens(l2_normalize(x.numpy()), alpha)
    np.testing.assert_allclose(w.numpy(), w_np, rtol=rtol, atol=1e-6)
    np.testing.assert_allclose(d.numpy(), w_np.sum(1, dtype=np.float64), rtol=rtol, atol=1e-6)


def test_reference_degenerate_matches_numpy():
    x = torch.ones(7, 4)
    w, d = kaff.affinity_reference(x, 10.0)
    assert np.array_equal(w.numpy(), affinity_from_tokens(l2_normalize(x.numpy()), 10.0))
    assert torch.equal(d, torch.full((7,), 7.0, dtype=torch.float64))


# ------------------------------------------------------------------------------------------------------------
# Dispatcher and fallback
# ------------------------------------------------------------------------------------------------------------

def test_dispatcher_falls_back_to_reference_on_cpu(monkeypatch, caplog):
    monkeypatch.setattr(kaff, "_INTERPRETED", False)  # as when TRITON_INTERPRET was not set at import
    x = clustered_tokens(40, 16, seed=3)
    with caplog.at_level(logging.DEBUG, logger=kaff.__name__):
        w, d = kaff.affinity_with_degrees(x, 10.0)
    assert "torch reference" in caplog.text
    w_ref, d_ref = kaff.affinity_reference(x, 10.0)
    assert torch.equal(w, w_ref) and torch.equal(d, d_ref)


def test_fused_affinity_refuses_cpu_tensor_without_interpreter(monkeypatch):
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    monkeypatch.setattr(kaff, "_INTERPRETED", False)
    with pytest.raises(InputError, match="CUDA tensor"):
        kaff.fused_affinity(torch.randn(5, 3))


def test_without_triton_module_imports_and_falls_back():
    """With triton hidden, the module imports, fused_affinity names the [gpu] extra, the dispatcher still works."""
    script = textwrap.dedent("""
        import sys
        sys.modules["triton"] = None          # find_spec -> None, import -> ImportError
        import torch
        import diffcut_engine.kernels.affinity as kaff
        from diffcut_engine.errors import BackendUnavailableError
        assert kaff.tl is None and not kaff.triton_interpreted()
        x = torch.randn(20, 6)
        try:
            kaff.fused_affinity(x)
        except BackendUnavailableError as e:
            assert "[gpu]" in str(e), e
        else:
            raise SystemExit("no BackendUnavailableError")
        w, d = kaff.affinity_with_degrees(x, 10.0)
        w_ref, d_ref = kaff.affinity_reference(x, 10.0)
        assert torch.equal(w, w_ref) and torch.equal(d, d_ref)
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_backend_error_is_an_import_error(monkeypatch):
    monkeypatch.setattr(kaff, "tl", None)
    with pytest.raises(ImportError, match=r"\[gpu\]"):
        kaff.fused_affinity(torch.randn(4, 2))
    with pytest.raises(BackendUnavailableError):
        kaff.fused_affinity(torch.randn(4, 2))


# ------------------------------------------------------------------------------------------------------------
# Input validation
# ------------------------------------------------------------------------------------------------------------

_BAD_TOKENS = {
    "1-D": (torch.randn(5), "shape"),
    "3-D": (torch.randn(2, 3, 4), "shape"),
    "no rows": (torch.randn(0, 4), "empty"),
    "no channels": (torch.randn(4, 0), "empty"),
    "integer": (torch.ones(4, 3, dtype=torch.int64), "floating"),
    "numpy": (np.ones((4, 3), np.float32), "torch.Tensor"),
    "nan": (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "NaN"),
    "inf": (torch.tensor([[1.0, 2.0], [float("inf"), 1.0]]), "infinite"),
}


@pytest.mark.parametrize("fn_name", ["affinity_reference", "affinity_with_degrees", "fused_affinity"])
@pytest.mark.parametrize("case", list(_BAD_TOKENS))
def test_bad_tokens_raise_input_error(fn_name, case, monkeypatch):
    if fn_name == "fused_affinity" and not HAS_TRITON:
        pytest.skip("triton is not installed")
    tokens, match = _BAD_TOKENS[case]
    with pytest.raises(InputError, match=match) as info:
        getattr(kaff, fn_name)(tokens, 10.0)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan"), float("inf"), True, "10", None])
@pytest.mark.parametrize("fn_name", ["affinity_reference", "affinity_with_degrees", "fused_affinity"])
def test_bad_alpha_raises_input_error(fn_name, alpha):
    if fn_name == "fused_affinity" and not HAS_TRITON:
        pytest.skip("triton is not installed")
    with pytest.raises(InputError, match="alpha"):
        getattr(kaff, fn_name)(torch.randn(4, 3), alpha)


def test_integer_and_numpy_alpha_are_accepted():
    x = clustered_tokens(12, 5, seed=0)
    w1, _ = kaff.affinity_reference(x, 3)
    w2, _ = kaff.affinity_reference(x, np.float32(3.0))
    assert torch.equal(w1, w2)


def test_interpreter_autotune_resets_minmax_between_trials(interpreter_run):
    _, out, _ = interpreter_run
    at = out["autotune"]
    assert at["trials"] == len(kaff.GRAM_TILES["ieee"]) == 3   # the ieee subset only, every tile <= 128 here
    assert at["best"] == {"BLOCK": 32, "BLOCK_K": 32}            # the fastest (first) trial
    # the extremes of the S written by the real launch, not the (-5, 5) the last trial left
    assert at["minmax"].tolist() == [at["s"].min().item(), at["s"].max().item()]


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_autotune_space_is_pruned_per_precision_and_size():
    configs = kaff.gram_configs()
    assert len(configs) == len({t for tiles in kaff.GRAM_TILES.values() for t in tiles}) == 6
    assert {c.num_stages for c in configs} == {kaff.GRAM_STAGES}

    def kept(precision, n):
        return sorted((c.kwargs["BLOCK"], c.kwargs["BLOCK_K"], c.num_warps)
                      for c in kaff.prune_gram_configs(configs, {"N": n, "C": 1280}, PRECISION=precision))

    assert kept("ieee", 1024) == sorted(kaff.GRAM_TILES["ieee"])
    assert all(block <= 64 for block, _, _ in kept("ieee", 4096))        # no spilling 128-wide ieee tiles
    assert kept("tf32", 4096) == kept("tf32x3", 4096) == sorted(kaff.GRAM_TILES["tf32"])
    assert kept("tf32", 100) == [(64, 32, 8), (128, 16, 8), (128, 32, 8)]  # 128 >= next_pow2(100): kept
    assert kept("tf32", 40) == [(64, 32, 8)]                             # wider than the matrix: dropped
    assert kept("ieee", 20) == [(32, 32, 4)]                             # the smallest always stays
    # the key is a bucket of N: one benchmark for every N up to the same power of two
    assert [kaff.n_bucket(n) for n in (1, 37, 256, 257, 1000, 1024, 1025, 4096)] == \
        [256, 256, 256, 512, 1024, 1024, 2048, 4096]


def test_reset_minmax_hook():
    buf = torch.tensor([-5.0, 5.0])
    kaff.reset_minmax({"minmax_ptr": buf})
    assert buf.tolist() == [float("inf"), float("-inf")]
    buf[:] = 0
    kaff.reset_minmax({"minmax_ptr": buf}, reset_only=True)   # the call the autotuner makes before the real run
    assert buf.tolist() == [float("inf"), float("-inf")]


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_block_256_only_under_the_interpreter(monkeypatch):
    monkeypatch.setattr(kaff, "_INTERPRETED", False)
    with pytest.raises(InputError, match=r"16, 32, 64, 128 on a GPU"):
        kaff.fused_affinity(torch.randn(4, 3), 10.0, block=256)
    assert kaff.GPU_BLOCKS == (16, 32, 64, 128) and kaff.INTERPRETER_BLOCKS[-1] == 256


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.parametrize("opts,match", [({"precision": "fp16"}, "precision"), ({"precision": None}, "precision"),
                                        ({"block": 48}, "block"), ({"block": True}, "block"),
                                        ({"block": 8}, "block")])
def test_bad_options_raise_input_error(opts, match):
    with pytest.raises(InputError, match=match):
        kaff.fused_affinity(torch.randn(4, 3), 10.0, **opts)


# ------------------------------------------------------------------------------------------------------------
# Compiled kernel on a CUDA device
# ------------------------------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available() and not kaff.triton_interpreted()),
                                reason="needs a CUDA device and triton (compiled mode)")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("n,c,alpha,block", [(37, 3, 10.0, None), (257, 64, 2.5, None), (1024, 1280, 10.0, None),
                                             (1000, 1280, 10.0, 64), (4096, 1280, 10.0, None), (300, 1, 1.0, 32)])
def test_gpu_ieee_matches_reference(n, c, alpha, block):
    x = _with_zero_row(clustered_tokens(n, c, seed=n), 3)
    w, d = kaff.fused_affinity(x.cuda(), alpha, block=block)
    w_ref, d_ref = kaff.affinity_reference(x, alpha)       # on the CPU: no TF32 question
    rtol = 2e-5 if c >= 1280 else 1e-5
    torch.testing.assert_close(w.cpu(), w_ref, rtol=rtol, atol=1e-6)
    torch.testing.assert_close(d.cpu(), d_ref, rtol=rtol, atol=1e-6)
    assert torch.equal(w, w.T) and w.min().item() == 0.0 and w.max().item() == 1.0


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["tf32", "tf32x3"])
def test_gpu_tensor_core_precisions_are_close(precision):
    x = clustered_tokens(1024, 1280, seed=1)
    w, d = kaff.fused_affinity(x.cuda(), 10.0, precision=precision)
    w_ref, d_ref = kaff.affinity_reference(x, 10.0)
    # tf32 keeps 10 mantissa bits: ~1e-3 on S, times alpha = 10 on W near 1; tf32x3 is close to fp32
    tol = {"tf32": (2e-2, 2e-3), "tf32x3": (1e-4, 1e-5)}[precision]
    torch.testing.assert_close(w.cpu(), w_ref, rtol=tol[0], atol=tol[1])
    torch.testing.assert_close(d.cpu(), d_ref, rtol=tol[0], atol=tol[1])


@pytest.mark.gpu
@needs_cuda
def test_gpu_degenerate_and_dispatch():
    w, d = kaff.fused_affinity(torch.ones(33, 7, device="cuda"), 10.0)
    assert torch.equal(w.cpu(), torch.ones(33, 33)) and torch.equal(d.cpu(), torch.full((33,), 33.0))
    x = clustered_tokens(100, 16, seed=2).cuda()
    w1, d1 = kaff.affinity_with_degrees(x, 10.0)
    w2, d2 = kaff.fused_affinity(x, 10.0)
    assert torch.equal(w1, w2) and torch.equal(d1, d2)


def test_reference_treats_a_rounding_level_spread_as_constant():
    x = torch.linspace(-1, 1, 1280).repeat(600, 1)
    w, d = kaff.affinity_reference(x, 10.0)
    assert torch.all(w == 1) and torch.all(d == 600)
    assert np.array_equal(w.numpy(), affinity_from_tokens(l2_normalize(x.numpy()), 10.0))
