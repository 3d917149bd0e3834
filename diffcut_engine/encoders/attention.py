"""Self-attention probabilities of a diffusers UNet, aggregated into one row-stochastic matrix (DiffSeg recipe).

For the random-walk NCut (``graph/rwncut.py``, docs/ALGORITHM.md section 7) the transition matrix P is the
self-attention of the UNet, aggregated over layers and resolutions as DiffSeg [1]_ does:

- for each selected self-attention (``attn1``) layer, softmax(Q K^T / sqrt(d)) is computed explicitly, one head at
  a time, and averaged over heads on the fly (fused SDPA kernels do not expose the probabilities);
- the key dimensions of the (n, h_l, w_l) head-mean are upsampled bilinearly to the target grid (H, W), each row
  is renormalised to sum 1, and the query dimensions are repeated (nearest) to (H, W);
- the layer is added to one (B, N, N) float32 accumulator (N = H W) with weight
  ``resolution_weight(side) / (number of selected layers at that resolution)``; resolution weights are
  proportional to the side length (DiffSeg's 64:32:16:8) or uniform, normalised to sum 1.

At no time are all layers' per-head matrices held: the peak is the accumulator, one layer's head-mean, one head's
probabilities and one upsampled layer (B, n, N). Layers that are not selected keep their processor (the fused
kernel). The result is row-stochastic and strictly positive (irreducible and aperiodic).

Extraction (:class:`AttentionExtractor`): ``mode="single"`` runs the full UNet once at ``timestep`` on the
clean latent (DiffSeg: t = 300, clean) or on the latent noised to ``timestep``; ``mode="inversion"`` runs the
first ``steps`` of a ``num_inference_steps`` DDIM inversion with the empty prompt and averages the attention of
the visited UNet calls. The extractor needs the PyTorch UNet: exported encoders (ONNX, TensorRT) stop at the
DiffCut feature layer and do not return attention probabilities.

References
----------
.. [1] J. Tian, L. Aggarwal, A. Colaco, Z. Kira, M. Gonzalez-Franco, "Diffuse, Attend, and Segment: Unsupervised
   Zero-Shot Segmentation using Stable Diffusion", CVPR 2024.
.. [2] D. Ivanova et al., "Unsupervised Segmentation by Diffusing, Walking and Cutting", WACV 2026.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import InputError
from ..utils.imports import require

torch = require("torch", "attention capture")
F = torch.nn.functional

__all__ = ["AttentionLayer", "self_attention_layers", "AttentionAggregator", "AttentionCaptureProcessor",
           "AttentionExtractor", "RESOLUTION_WEIGHTS", "EXTRACTION_MODES"]

RESOLUTION_WEIGHTS = ("side", "uniform")
EXTRACTION_MODES = ("single", "inversion")


@dataclass(frozen=True)
class AttentionLayer:
    """One self-attention module of the UNet.

    Attributes
    ----------
    path : str
        Dotted module path, e.g. ``"up_blocks.1.attentions.0.transformer_blocks.0.attn1"``.
    factor : int
        Downsampling factor of its token grid relative to the latent (1, 2, 4, 8).
    """

    path: str
    factor: int


def self_attention_layers(unet) -> List[AttentionLayer]:
    """Every self-attention (``attn1``) module of a ``UNet2DConditionModel`` with its grid factor, in call order.

    The factor doubles after each down block with a downsampler and halves after each up block with an upsampler.
    """
    layers: List[AttentionLayer] = []

    def add(prefix, block, factor):
        for name, module in block.named_modules():
            if name.endswith("attn1") and not getattr(module, "is_cross_attention", False):
                layers.append(AttentionLayer(f"{prefix}.{name}", factor))

    factor = 1
    for i, blk in enumerate(unet.down_blocks):
        add(f"down_blocks.{i}", blk, factor)
        if getattr(blk, "downsamplers", None) is not None:
            factor *= 2
    if getattr(unet, "mid_block", None) is not None:
        add("mid_block", unet.mid_block, factor)
    for i, blk in enumerate(unet.up_blocks):
        add(f"up_blocks.{i}", blk, factor)
        if getattr(blk, "upsamplers", None) is not None:
            factor //= 2
    return layers


class AttentionAggregator:
    """The (B, N, N) accumulator of the DiffSeg aggregate, fed one head-mean at a time by the processors.

    Parameters
    ----------
    latent_size : (int, int)
        (h_lat, w_lat) of the latents the UNet runs on.
    layers : list of AttentionLayer
        The selected layers (their factors fix the per-layer weights).
    grid_factor : int
        Factor of the target grid: (H, W) = latent_size / grid_factor.
    resolution_weights : {"side", "uniform"} or dict
        ``side``: proportional to the side length, i.e. to 1 / factor (DiffSeg); ``uniform``; or an explicit
        ``{factor: weight}``. Normalised to sum 1 over the selected resolutions.
    """

    def __init__(self, latent_size, layers: Sequence[AttentionLayer], grid_factor: int, resolution_weights="side"):
        self.latent_size = (int(latent_size[0]), int(latent_size[1]))
        self.grid = (self.latent_size[0] // grid_factor, self.latent_size[1] // grid_factor)
        counts: Dict[int, int] = {}
        for layer in layers:
            counts[layer.factor] = counts.get(layer.factor, 0) + 1
        if isinstance(resolution_weights, dict):
            raw = {f: float(resolution_weights.get(f, 0.0)) for f in counts}
        elif resolution_weights == "side":
            raw = {f: 1.0 / f for f in counts}
        elif resolution_weights == "uniform":
            raw = {f: 1.0 for f in counts}
        else:
            raise InputError(f"unknown resolution_weights {resolution_weights!r}; choose side, uniform or a dict")
        total = sum(raw.values())
        if not total > 0:
            raise InputError(f"resolution weights must have a positive sum, got {resolution_weights!r}")
        #: weight of one layer at each factor
        self.layer_weight = {f: raw[f] / total / counts[f] for f in counts}
        self.total: Optional["torch.Tensor"] = None
        self.scale = 1.0  # multiplies every contribution (1 / number of UNet calls when averaging over steps)
        self.calls = 0

    def layer_grid(self, factor: int) -> Tuple[int, int]:
        return (math.ceil(self.latent_size[0] / factor), math.ceil(self.latent_size[1] / factor))

    def add(self, probs_mean: "torch.Tensor", factor: int) -> None:
        """Add one layer's head-mean probabilities (B, n, n), n = h_l w_l, to the aggregate."""
        b, n, _ = probs_mean.shape
        hl, wl = self.layer_grid(factor)
        if hl * wl != n:
            raise InputError(f"attention layer at factor {factor} has {n} tokens; expected {hl}x{wl}")
        H, W = self.grid
        if self.total is None:
            self.total = torch.zeros((b, H * W, H * W), dtype=torch.float32, device=probs_mean.device)
        x = probs_mean.float()
        if (hl, wl) != (H, W):
            # keys: bilinear (area when shrinking) to the target grid, then rows renormalised
            mode = "bilinear" if hl <= H else "area"
            kw = {"align_corners": False} if mode == "bilinear" else {}
            x = F.interpolate(x.reshape(b * n, 1, hl, wl), size=(H, W), mode=mode, **kw).reshape(b, n, H * W)
            x = x / x.sum(dim=-1, keepdim=True)
        weight = self.layer_weight[factor] * self.scale
        if hl == H and wl == W:
            self.total.add_(x, alpha=weight)
        elif H % hl == 0 and W % wl == 0:
            # queries: nearest repeat, as a broadcast add into the accumulator's (H, W) query grid
            view = self.total.view(b, hl, H // hl, wl, W // wl, H * W)
            view.add_(x.view(b, hl, 1, wl, 1, H * W), alpha=weight)
        else:  # queries on a grid that does not divide the target: nearest resize of the query axis
            q = F.interpolate(x.permute(0, 2, 1).reshape(b, H * W, hl, wl), size=(H, W),
                              mode="nearest" if hl <= H else "area")
            self.total.add_(q.reshape(b, H * W, H * W).permute(0, 2, 1), alpha=weight)


class AttentionCaptureProcessor:
    """A diffusers attention processor for self-attention that also feeds the head-mean probabilities to an
    :class:`AttentionAggregator`.

    The output equals ``AttnProcessor2_0``'s (same projections, norms, residual and rescaling) to rounding: the
    probabilities are computed explicitly, one head at a time (float32 softmax), and multiplied by the values.
    """

    def __init__(self, aggregator: AttentionAggregator, factor: int):
        self.aggregator = aggregator
        self.factor = factor

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        b, n, _ = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        query = attn.to_q(hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        heads = attn.heads
        head_dim = key.shape[-1] // heads
        query = query.view(b, -1, heads, head_dim).transpose(1, 2)
        key = key.view(b, -1, heads, head_dim).transpose(1, 2)
        value = value.view(b, -1, heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        mask = None
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, key.shape[2], b).view(b, heads, -1, key.shape[2])
        scale = attn.scale
        outs = []
        mean = None
        for h in range(heads):
            scores = torch.matmul(query[:, h].float(), key[:, h].float().transpose(-1, -2)) * scale
            if mask is not None:
                scores = scores + mask[:, h].float()
            probs = scores.softmax(dim=-1)
            del scores
            outs.append(torch.matmul(probs.to(value.dtype), value[:, h]))
            mean = probs if mean is None else mean.add_(probs)
            del probs
        mean.div_(heads)
        self.aggregator.add(mean, self.factor)
        del mean
        hidden_states = torch.stack(outs, dim=1).transpose(1, 2).reshape(b, -1, heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextlib.contextmanager
def capture_attention(unet, layers: Sequence[AttentionLayer], aggregator: AttentionAggregator):
    """Install :class:`AttentionCaptureProcessor` on ``layers`` only; restore their processors on exit."""
    saved = {}
    try:
        for layer in layers:
            module = unet.get_submodule(layer.path)
            saved[layer.path] = module.processor
            module.set_processor(AttentionCaptureProcessor(aggregator, layer.factor))
        yield aggregator
    finally:
        for path, proc in saved.items():
            unet.get_submodule(path).set_processor(proc)


def select_layers(unet, layers=None, factors=None) -> List[AttentionLayer]:
    """The self-attention layers to capture.

    Parameters
    ----------
    layers : sequence of str, optional
        Keep layers whose path contains one of these strings (e.g. ``("up_blocks",)``); default all.
    factors : sequence of int, optional
        Keep layers at these grid factors (1, 2, 4, 8 relative to the latent); default all.

    Raises
    ------
    InputError
        If nothing is selected.
    """
    found = self_attention_layers(unet)
    out = [layer for layer in found
           if (not layers or any(s in layer.path for s in layers)) and (not factors or layer.factor in factors)]
    if not out:
        raise InputError(f"no self-attention layer matches layers={layers!r}, factors={factors!r}; available "
                         f"factors: {sorted({x.factor for x in found})}")
    return out


class AttentionExtractor:
    """Aggregated self-attention of a :class:`~diffcut_engine.encoders.diffusion.DiffusionEncoder`'s UNet.

    Parameters
    ----------
    encoder : DiffusionEncoder
        Supplies the UNet, the VAE, the DDIM scheduler and the cached empty-prompt conditioning.
    mode : {"single", "inversion"}, default "single"
        ``single``: one UNet call at ``timestep`` (DiffSeg). ``inversion``: the first ``steps`` steps of a
        ``num_inference_steps`` DDIM inversion, attention averaged over the visited calls.
    timestep : int, default 300
        Timestep of ``single`` (DiffSeg's 300).
    noise : bool, default False
        ``single`` on the latent noised to ``timestep`` with the encoder's seeded noise instead of the clean
        latent (DiffSeg uses the clean one).
    steps, num_inference_steps : int, default 10 and 50
        Inversion length.
    layers, factors
        Layer selection (:func:`select_layers`).
    resolution_weights : {"side", "uniform"} or dict, default "side"
    grid_factor : int, optional
        Target grid factor; default the finest selected factor.
    """

    def __init__(self, encoder, *, mode: str = "single", timestep: int = 300, noise: bool = False, steps: int = 10,
                 num_inference_steps: int = 50, layers=None, factors=None, resolution_weights="side",
                 grid_factor: Optional[int] = None):
        if mode not in EXTRACTION_MODES:
            raise InputError(f"unknown attention extraction mode {mode!r}; choose one of "
                             f"{', '.join(EXTRACTION_MODES)}")
        n_train = encoder.scheduler.config.num_train_timesteps
        if isinstance(timestep, bool) or not isinstance(timestep, int) or not 0 <= timestep < n_train:
            raise InputError(f"attention timestep must be an integer in [0, {n_train - 1}], got {timestep!r}")
        if not (isinstance(num_inference_steps, int) and num_inference_steps >= 1):
            raise InputError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        if not (isinstance(steps, int) and 1 <= steps <= num_inference_steps):
            raise InputError(f"steps must be an integer in [1, {num_inference_steps}], got {steps!r}")
        self.encoder = encoder
        self.mode, self.timestep, self.noise = mode, timestep, bool(noise)
        self.steps, self.num_inference_steps = steps, num_inference_steps
        self.layers = select_layers(encoder.unet, layers, factors)
        self.resolution_weights = resolution_weights
        finest = min(layer.factor for layer in self.layers)
        self.grid_factor = finest if grid_factor is None else int(grid_factor)
        vae_factor = 2 ** (len(encoder.vae.config.block_out_channels) - 1)
        #: pixels per node of the attention grid
        self.stride = vae_factor * self.grid_factor

    def grid_size(self, height: int, width: int) -> Tuple[int, int]:
        return height // self.stride, width // self.stride

    def extract(self, pixels) -> "torch.Tensor":
        """Aggregated attention of a batch.

        Parameters
        ----------
        pixels : torch.Tensor
            (B, 3, H, W) images in [-1, 1].

        Returns
        -------
        torch.Tensor
            (B, N, N) float32 row-stochastic matrices on the encoder's device, N = (H / stride) (W / stride), rows
            and columns in row-major grid order.
        """
        enc = self.encoder
        pixels = enc.check_pixels(pixels)
        b, _, height, width = pixels.shape
        with torch.no_grad():
            latents = enc.encode_latents(pixels)
            agg = AttentionAggregator(latents.shape[-2:], self.layers, self.grid_factor, self.resolution_weights)
            hidden, added = enc.conditioning(height, width, b)
            with capture_attention(enc.unet, self.layers, agg), enc._unet_precision():
                if self.mode == "single":
                    x = latents
                    if self.noise:
                        noise = enc.noise(latents.shape[-2:]).expand_as(latents)
                        t = torch.full((b,), self.timestep, dtype=torch.long, device=enc.device)
                        x = enc.scheduler.add_noise(latents, noise, t)
                    self._unet(x, self.timestep, hidden, added)
                else:
                    agg.scale = 1.0 / self.steps
                    self._invert(latents, hidden, added)
            P = agg.total
            return P / P.sum(dim=-1, keepdim=True)

    def _unet(self, x, t, hidden, added):
        enc = self.encoder
        ts = torch.full((x.shape[0],), int(t), dtype=torch.long, device=enc.device)
        return enc.unet(x.to(enc.dtype), ts, encoder_hidden_states=hidden, added_cond_kwargs=added).sample.float()

    def _invert(self, x, hidden, added):
        """DDIM inversion x_{t_prev} -> x_t with the empty prompt, for the first ``steps`` timesteps."""
        sched = self.encoder.scheduler
        sched.set_timesteps(self.num_inference_steps)
        ts = sorted(int(t) for t in sched.timesteps)[: self.steps]
        abar = sched.alphas_cumprod.to(device=x.device, dtype=torch.float32)
        a_prev = torch.tensor(1.0, device=x.device)
        for t in ts:
            eps = self._unet(x, t, hidden, added)
            a_t = abar[t]
            x0 = (x - (1 - a_prev).sqrt() * eps) / a_prev.sqrt()
            x = a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps
            a_prev = a_t
        return x
