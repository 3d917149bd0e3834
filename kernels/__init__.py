"""Triton kernels, installed as ``diffcut_engine.kernels`` (mapped from the top-level ``kernels/`` folder).

One file per kernel, each with its torch reference, a checking wrapper and a parity test. The fused affinity
kernel (normalise + Gram tile + global min/max + power alpha + degrees) is the first planned one; until it lands,
the graph stage computes the affinity with numpy (``diffcut_engine.graph.affinity``).
"""

__all__: list = []
