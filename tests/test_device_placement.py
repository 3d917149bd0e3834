"""Multi-GPU placement of the device graph stage (graph/device.py), checked on the CPU with stand-ins: the Triton
kernel must launch under the features' CUDA device (as CuPy computes there), not torch's current one."""

import contextlib

import numpy as np
import pytest
import torch

from diffcut_engine import InputError
from diffcut_engine.graph import device


class _CudaTensorStandIn:
    """What ``_triton_affinity`` reads of a CUDA tensor on ``cuda:1``."""

    device = torch.device("cuda", 1)
    shape = (2, 3, 4)

    def is_floating_point(self):
        return True

    def reshape(self, *shape):
        return self


def test_triton_kernel_launches_on_the_features_device(monkeypatch):
    active = []

    @contextlib.contextmanager
    def fake_device(dev):
        active.append(torch.device(dev))
        yield
        active.pop()

    seen = []

    class FakeKernels:
        @staticmethod
        def fused_affinity(tokens, alpha, check_finite):
            seen.append(list(active))
            return np.ones((6, 6), np.float32), np.full(6, 6.0)

    monkeypatch.setattr(torch.cuda, "device", fake_device)
    monkeypatch.setattr(device, "_fused_affinity_module", lambda: FakeKernels)
    W, d = device._triton_affinity(_CudaTensorStandIn(), 10.0)
    assert seen == [[torch.device("cuda", 1)]] and active == []
    assert W.shape == (6, 6) and d.shape == (6,)


def test_torch_device_of_is_a_no_op_off_cuda():
    with device.torch_device_of(torch.zeros(2)):
        pass
    with device.torch_device_of(np.zeros(2)):
        pass


def test_features_on_several_devices_are_refused(monkeypatch):
    """CuPy arrays on two GPUs cannot share one batch (one CuPy device context for the whole solve)."""

    class Dev:
        def __init__(self, i):
            self.id = i

    class Arr:
        def __init__(self, i):
            self.device = Dev(i)

    fake_xp = type("cupy", (), {})()
    monkeypatch.setattr(device, "resolve_namespace", lambda feats, xp: (fake_xp, [Arr(0), Arr(1)]))
    with pytest.raises(InputError, match="several devices"):
        device.device_ncut_trees([np.zeros((2, 2, 3)), np.zeros((2, 2, 3))])
