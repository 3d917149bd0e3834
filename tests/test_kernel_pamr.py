"""Parity of the fused Triton PAMR kernel (``diffcut_engine.kernels.pamr``) with its torch reference.

Triton decides when the kernel module is imported whether it compiles or interprets (``TRITON_INTERPRET=1``), so
the interpreter runs happen in one fresh subprocess that reads the inputs from a file and writes the results back.
Small sizes: the interpreter runs every program with numpy. A ``gpu`` test runs the compiled kernel on CUDA.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import diffcut_engine.kernels.pamr as kpamr
from diffcut_engine import refine
from diffcut_engine.errors import BackendUnavailableError, InputError


def _case(h, w, k, dilations, iters, seed):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(3, h, w, generator=g)
    img[:, : h // 2] *= 0.3                                       # an edge, so the affinities are not uniform
    lab = torch.randint(0, k, (h // 4 + 1, w // 4 + 1), generator=g)
    masks = torch.nn.functional.one_hot(lab, k).movedim(-1, 0).float()[None]
    masks = torch.nn.functional.interpolate(masks, size=(h, w), mode="bilinear", align_corners=True)
    aff = refine.pamr_affinity(img, dilations)[None]
    return masks, aff, tuple(dilations), iters


def _cases():
    return {
        "k3_eval": _case(20, 27, 3, (1, 2, 4, 8), 4, 0),
        "k20_kblock_ragged": _case(17, 13, 20, (1, 3), 3, 1),      # 2 blocks of 16 masks, one ragged
        "k5_demo_dilations": _case(24, 24, 5, (1, 2, 4, 8, 12, 24, 32, 64), 2, 2),   # dilations beyond the image
        "one_iter_block64": _case(9, 40, 2, (1, 2), 1, 3),
        "huge_dilation": _case(9, 11, 3, (1, 32768), 2, 6),        # the reference pads by at most the image's size
    }


_SCRIPT = textwrap.dedent("""
    import sys, torch
    import diffcut_engine.kernels.pamr as kpamr
    cases = torch.load(sys.argv[1])
    out = {"available": kpamr.available("cpu"), "results": {}}
    for name, (masks, aff, dil, iters) in cases.items():
        opts = {"block": 64} if name.endswith("block64") else {}
        before = masks.clone()
        out["results"][name] = kpamr.propagate(masks, aff, dil, iters, **opts)
        out.setdefault("untouched", []).append(torch.equal(before, masks))
    m, a, d, _ = cases["k3_eval"]
    out["bad_iters"] = []
    for bad in (-1, 2.0, "3", True, 10**6):
        try:
            kpamr.propagate(m, a, d, bad)
            out["bad_iters"].append(None)
        except Exception as exc:
            out["bad_iters"].append(type(exc).__name__)
    z = kpamr.propagate(m, a, d, 0)
    out["zero_iters_copy"] = z is not m and torch.equal(z, m)
    torch.save(out, sys.argv[2])
""")


@pytest.fixture(scope="module")
def interpreter_run(tmp_path_factory):
    if kpamr.tl is None:
        pytest.skip("triton is not installed")
    folder = tmp_path_factory.mktemp("kernel_pamr")
    cases = _cases()
    torch.save(cases, folder / "cases.pt")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(folder / "cases.pt"), str(folder / "out.pt")],
                          env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return cases, torch.load(folder / "out.pt")


@pytest.mark.parametrize("name", list(_cases()))
def test_interpreter_matches_reference(interpreter_run, name):
    cases, out = interpreter_run
    assert out["available"] is True and all(out["untouched"])
    masks, aff, dil, iters = cases[name]
    ref = kpamr.propagate_reference(masks, aff, dil, iters)
    got = out["results"][name]
    assert got.shape == ref.shape
    # the same float32 products and sums in the same tap order (no fused multiply-add on either side): bit for bit
    assert torch.equal(got, ref), float((got - ref).abs().max())


def test_interpreter_checks_iters_and_never_returns_the_callers_masks(interpreter_run):
    """iters -1 returned the caller's tensor and 2.0 / "3" raised raw TypeErrors; iters 0 returned the caller's own
    masks (a later in-place change of the result would change them)."""
    _, out = interpreter_run
    assert out["bad_iters"] == ["InputError"] * 5
    assert out["zero_iters_copy"] is True


def test_reference_is_refines_pamr_soft():
    masks, aff, dil, iters = _case(15, 19, 4, (1, 2, 5), 3, 4)
    g = torch.Generator().manual_seed(4)
    img = torch.rand(3, 15, 19, generator=g)
    img[:, :7] *= 0.3
    torch.testing.assert_close(kpamr.propagate_reference(masks, aff, dil, iters),
                               refine.pamr_soft(img, masks[0], iters=iters, dilations=dil)[None], rtol=0, atol=0)


def test_without_cuda_the_kernel_says_why():
    if kpamr.available("cpu"):
        pytest.skip("interpreter enabled in this process")
    masks, aff, dil, iters = _case(8, 8, 2, (1,), 1, 5)
    with pytest.raises(BackendUnavailableError, match="Triton"):
        kpamr.propagate(masks, aff, dil, iters)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or kpamr.tl is None, reason="needs CUDA and Triton")
def test_compiled_kernel_matches_reference_on_cuda():
    for masks, aff, dil, iters in _cases().values():
        masks, aff = masks.cuda(), aff.cuda()
        got, ref = kpamr.propagate(masks, aff, dil, iters), kpamr.propagate_reference(masks, aff, dil, iters)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
        # compiled without fp fusion: the reference's rounded products and sums (unmeasured on a device so far)
        assert torch.equal(got.argmax(1), ref.argmax(1))
        assert torch.equal(got, ref), float((got - ref).abs().max())


def test_interpreter_is_decided_at_import_and_blocks_are_checked(monkeypatch):
    """TRITON_INTERPRET set after the import changed available() but not the compiled kernel, which then failed
    with a raw Triton error; a block that is not a power of two reached Triton's arange."""
    masks, aff = torch.rand(1, 2, 4, 4), torch.rand(1, 8, 4, 4)
    before = kpamr.available("cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "0" if kpamr._INTERPRETED else "1")
    assert kpamr.available("cpu") == before
    for bad in ({"block": 100}, {"k_block": 3}, {"block": 0}, {"k_block": True}):
        with pytest.raises(InputError, match="power of two"):
            kpamr.propagate(masks, aff, (1,), 1, **bad)
