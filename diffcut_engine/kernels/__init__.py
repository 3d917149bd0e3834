"""Triton kernels of the engine (``diffcut_engine.kernels``), importable from an install and a plain checkout alike.

One file per kernel, each with its torch reference, a checking wrapper, its autotune configurations and a parity
test (``tests/test_kernel_<name>.py``); its benchmark is ``benchmarks/bench_<name>.py``.

- ``affinity``: fused DiffCut affinity (L2 normalisation + Gram tiles + global min/max + power alpha + degrees):
  ``fused_affinity`` (Triton), ``affinity_reference`` (torch) and the dispatcher ``affinity_with_degrees``, which
  falls back to the reference where Triton cannot run. The numpy graph stage (``diffcut_engine.graph.affinity``)
  has the same semantics.
- ``pamr``: fused PAMR propagation (all dilations of a step in one pass, 16 masks per program): ``propagate``
  (Triton) and ``propagate_reference`` (torch); used by ``refine`` on CUDA.
- ``pamr_cpu``: the CPU fast path of PAMR in numba (extra ``[fast]``): fused affinities, a row-vectorised dense
  step, the top-C step with its error bound, and the edge-aware label upsampling.

Triton is optional (extra ``[gpu]``): the modules import without it. Set ``TRITON_INTERPRET=1`` before importing a
kernel module to run its kernels on the CPU interpreter.
"""

__all__: list = []
