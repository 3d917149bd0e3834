"""A small, deterministic colour encoder for testing the engine's plumbing quickly.

Each 32x32 cell becomes a 21-d vector: its mean RGB plus 18 Gaussian responses of the mean colour to fixed colour
prototypes. It does real work (cells of different colours get different features),
so segmentations are meaningful, but it needs no weights.
"""

import torch
import torch.nn.functional as F

from diffcut_engine.encoders import FeatureEncoder


class ColourEncoder(FeatureEncoder):
    name = "colour-test-encoder"
    family = "test"
    stride = 32

    def __init__(self):
        self.device = torch.device("cpu")
        g = torch.Generator().manual_seed(0)
        self.prototypes = torch.rand(18, 3, generator=g)
        self.calls = 0

    def encode(self, pixels):
        self.calls += 1
        x = (pixels.float() + 1) / 2
        mean = F.avg_pool2d(x, self.stride)
        m = mean.permute(0, 2, 3, 1)
        rbf = torch.exp(-((m[..., None, :] - self.prototypes) ** 2).sum(-1) / 0.05)
        feats = torch.cat([m, rbf], dim=-1)
        return F.normalize(feats, dim=-1)

    @property
    def default_tau(self):
        return 0.5
