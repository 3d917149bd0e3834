"""Diffusion features: the DiffCut encoder on a Stable Diffusion / SDXL-type UNet (PyTorch reference backend).

What it computes, following the official DiffCut extractor (``tools/ldm.py`` of ``PaulCouairon/DiffCut``) step
by step; see ``shared/design/DIFFCUT.md`` section 1:

1. **VAE**: ``z = vae.encode(x).latent_dist.mean * vae.config.scaling_factor`` in float32 (the posterior
   *mean*, not a sample; the SDXL VAE overflows in float16, so it is always kept and run in float32).
2. **Noise**: one ``(1, 4, H/8, W/8)`` tensor drawn from a generator seeded ``seed`` (42) and shared by every
   image of the batch, added with DDIM's variance-preserving ``add_noise`` at the raw training timestep ``t``
   (50 of 1000): ``sqrt(abar_t) z + sqrt(1 - abar_t) eps``. The checkpoint's own scheduler (Euler for SSD-1B)
   is replaced by ``DDIMScheduler.from_config(..., timestep_spacing="trailing")`` because Euler's
   ``add_noise`` is sigma-based.
3. **Conditioning**: the empty prompt ``""`` without classifier-free guidance, encoded once by the pipeline's
   own ``encode_prompt`` and cached; the text encoders are then released. SDXL-type models also get the pooled
   text embeddings and ``time_ids = [H, W, 0, 0, H, W]`` for the pixel size of the batch.
4. **UNet, truncated**: the tensor DiffCut uses is the output of ``attn1`` (self-attention, after ``to_out``,
   before the residual add) of the last transformer block of the last attention module of the last down block
   that has attentions (``down_blocks[-1]`` for SDXL / SSD-1B, ``down_blocks[-2]`` for SD 1.x). The official
   code runs the whole UNet with a forward hook and throws the output away; :class:`TruncatedUNet` runs the
   same modules in the same order and stops right there, so the mid block, the up blocks and everything after
   the hooked ``attn1`` never execute. For SSD-1B at 1024 px that is 1.28 instead of 4.21 TFLOP (DIFFCUT.md
   section 8). ``DiffusionEncoder.full_unet_hook_features`` keeps the official way for the parity tests.
5. **Features**: the ``(B, h*w, C)`` tokens (row-major) become ``(B, h, w, C)``, float32, L2-normalised over
   ``C``. ``h, w = H / 32, W / 32``.

Deliberate differences from the official code, all documented where they happen:

- the UNet is truncated (identical result, tested);
- the VAE weights are loaded in float32 from the checkpoint. The official code loads the whole pipeline in
  float16 and upcasts the VAE *computation* to float32 with autocast, so its VAE weights are float16-rounded;
  the difference is at the level of float16 rounding of the weights;
- ``time_ids`` follow the actual (H, W) of the batch; for the official 1024 x 1024 input this is the official
  ``[1024, 1024, 0, 0, 1024, 1024]``.

References
----------
.. [1] P. Couairon, M. Shukor, J.-E. Haugeard, M. Cord, N. Thome, "DiffCut: Catalyzing Zero-Shot Semantic
   Segmentation with Diffusion Features and Recursive Normalized Cut", NeurIPS 2024, arXiv:2406.02842.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Dict, Optional, Tuple

from ..errors import InputError, ModelLoadError
from ..utils.imports import require
from .base import FeatureEncoder

torch = require("torch", "the diffusion encoder")

logger = logging.getLogger(__name__)

__all__ = ["DiffusionEncoder", "TruncatedUNet", "find_hooked_attention", "resolve_device", "resolve_dtype"]

#: Accepted names for ``dtype``.
DTYPE_NAMES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

#: Pipeline components the encoder needs; every other component listed in ``model_index.json`` (safety
#: checker, feature extractor, image encoder) is not loaded at all.
_NEEDED_COMPONENTS = ("vae", "unet", "scheduler", "text_encoder", "text_encoder_2", "tokenizer",
                      "tokenizer_2")


# ------------------------------------------------------------------------------------------------------------
# Small helpers: device/dtype resolution, locating the hooked module
# ------------------------------------------------------------------------------------------------------------

def resolve_device(device="auto") -> "torch.device":
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device`` into a ``torch.device``.

    ``"auto"`` picks CUDA when it is available, else the CPU.

    Raises
    ------
    InputError
        If the value is not a device name, or CUDA is asked for but not available.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} was requested but CUDA is not available "
                         f"(torch {torch.__version__})")
    return dev


def resolve_dtype(dtype="auto", device: "torch.device" = None) -> "torch.dtype":
    """Turn ``"auto"``, ``"fp32"``, ``"fp16"``, ``"bf16"`` or a ``torch.dtype`` into a ``torch.dtype``.

    ``"auto"`` is float16 on CUDA (as the official code) and float32 elsewhere.

    Raises
    ------
    InputError
        If the value is not one of the accepted names or dtypes.
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPE_NAMES.values():
            raise InputError(f"dtype must be one of auto, {', '.join(DTYPE_NAMES)}, got {dtype}")
        return dtype
    if dtype is None or dtype == "auto":
        return torch.float16 if device is not None and device.type == "cuda" else torch.float32
    if dtype not in DTYPE_NAMES:
        raise InputError(f"dtype must be one of auto, {', '.join(DTYPE_NAMES)}, got {dtype!r}")
    return DTYPE_NAMES[dtype]


def _dtype_name(dtype) -> str:
    return {v: k for k, v in DTYPE_NAMES.items()}.get(dtype, str(dtype))


def find_hooked_attention(unet) -> Tuple[int, str]:
    """Locate DiffCut's hooked module in a ``UNet2DConditionModel``.

    It is ``attn1`` of the last transformer block of the last attention module of the last down block that has
    attentions: ``down_blocks[-1]`` for SDXL / SSD-1B (whose last down block has attentions and no
    downsampler), ``down_blocks[-2]`` for SD 1.x/2.x (whose last down block is a plain ``DownBlock2D``).

    Parameters
    ----------
    unet : diffusers.UNet2DConditionModel

    Returns
    -------
    block_index : int
        Index of that down block in ``unet.down_blocks``.
    path : str
        Dotted module path, e.g. ``"down_blocks.2.attentions.1.transformer_blocks.3.attn1"`` for SSD-1B.

    Raises
    ------
    ModelLoadError
        If no down block has attentions (not a text-conditioned UNet).
    """
    with_attn = [i for i, blk in enumerate(unet.down_blocks) if len(getattr(blk, "attentions", None) or [])]
    if not with_attn:
        raise ModelLoadError("the UNet has no down block with attention modules, so it has no DiffCut "
                             "feature layer")
    b = with_attn[-1]
    attentions = unet.down_blocks[b].attentions
    n_tb = len(attentions[-1].transformer_blocks)
    return b, f"down_blocks.{b}.attentions.{len(attentions) - 1}.transformer_blocks.{n_tb - 1}.attn1"


# ------------------------------------------------------------------------------------------------------------
# The truncated UNet
# ------------------------------------------------------------------------------------------------------------

class TruncatedUNet(torch.nn.Module):
    """The part of a ``UNet2DConditionModel`` that DiffCut needs: from the input to the hooked ``attn1``.

    It calls the UNet's own submodules in the order of ``UNet2DConditionModel.forward``: time embedding (plus
    the SDXL ``text_time`` embedding), ``conv_in``, the down blocks before the hooked one, then inside the
    hooked down block its resnet/attention pairs up to the last attention, whose ``Transformer2DModel`` runs
    ``norm``, ``proj_in`` and its transformer blocks up to the last one, of which only ``norm1`` and ``attn1``
    run. Nothing after that (the rest of the block, downsamplers, later down blocks, mid block, up blocks,
    ``conv_out``) is executed. No exceptions or hooks are used, so the module can be traced or exported (ONNX)
    as is.

    Parameters
    ----------
    unet : diffusers.UNet2DConditionModel
        The full UNet; its weights are shared, not copied.

    Raises
    ------
    ModelLoadError
        If the UNet uses a feature this truncated forward does not reproduce (class embeddings, an
        ``encoder_hid_proj``, additional embeddings other than SDXL's ``text_time``, non-LayerNorm transformer
        blocks).
    """

    def __init__(self, unet):
        super().__init__()
        self.unet = unet
        self.block_index, self.hook_path = find_hooked_attention(unet)
        cfg = unet.config
        # Refuse what the truncated forward does not reproduce, instead of silently computing something else.
        problems = []
        if getattr(unet, "class_embedding", None) is not None:
            problems.append("class embeddings")
        if getattr(unet, "encoder_hid_proj", None) is not None:
            problems.append(f"encoder_hid_dim_type={cfg.encoder_hid_dim_type!r}")
        if cfg.addition_embed_type not in (None, "text_time"):
            problems.append(f"addition_embed_type={cfg.addition_embed_type!r}")
        block = unet.down_blocks[self.block_index]
        if len(block.resnets) != len(block.attentions):
            problems.append("a down block with unpaired resnets and attentions")
        transformer = block.attentions[-1]
        if not getattr(transformer, "is_input_continuous", True):
            problems.append("non-continuous transformer input")
        last = transformer.transformer_blocks[-1]
        norm_type = getattr(last, "norm_type", "layer_norm")
        if norm_type != "layer_norm" or getattr(last, "pos_embed", None) is not None:
            problems.append(f"transformer blocks with norm_type={norm_type!r} or positional embeddings")
        if problems:
            raise ModelLoadError("unsupported UNet for the truncated DiffCut encoder: " + ", ".join(problems))

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None):
        """Run the UNet up to the hooked ``attn1`` and return its output as a grid.

        Parameters
        ----------
        sample : torch.Tensor
            (B, 4, h_lat, w_lat) noisy latents, in the UNet's dtype.
        timestep : torch.Tensor
            (B,) int64 raw training timesteps.
        encoder_hidden_states : torch.Tensor
            (B, 77, D) prompt embeddings.
        text_embeds, time_ids : torch.Tensor, optional
            (B, P) pooled text embeddings and (B, 6) size conditioning; required for SDXL-type UNets.

        Returns
        -------
        torch.Tensor
            (B, h, w, C) ``attn1`` output in the UNet's dtype, tokens in row-major order, with
            ``(h, w) = (h_lat, w_lat) / 2**(number of downsamplers before the hooked block)``.
        """
        unet = self.unet
        added_cond_kwargs = {}
        if text_embeds is not None:
            added_cond_kwargs = {"text_embeds": text_embeds, "time_ids": time_ids}

        # 1. Time (+ SDXL size/pooled-text) embedding, exactly as UNet2DConditionModel.forward.
        if unet.config.center_input_sample:
            sample = 2 * sample - 1.0
        t_emb = unet.get_time_embed(sample=sample, timestep=timestep)
        emb = unet.time_embedding(t_emb, None)
        aug_emb = unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states,
                                     added_cond_kwargs=added_cond_kwargs)
        if aug_emb is not None:
            emb = emb + aug_emb
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)

        # 2. conv_in and the down blocks before the hooked one, complete.
        hidden = unet.conv_in(sample)
        for block in unet.down_blocks[: self.block_index]:
            if getattr(block, "has_cross_attention", False):
                hidden, _ = block(hidden_states=hidden, temb=emb, encoder_hidden_states=encoder_hidden_states)
            else:
                hidden, _ = block(hidden_states=hidden, temb=emb)

        # 3. The hooked down block: every resnet/attention pair but the last, then the last resnet.
        block = unet.down_blocks[self.block_index]
        for resnet, attn in zip(block.resnets[:-1], block.attentions[:-1]):
            hidden = resnet(hidden, emb)
            hidden = attn(hidden, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
        hidden = block.resnets[-1](hidden, emb)

        # 4. The last Transformer2DModel (its continuous-input path) up to its last block's attn1.
        transformer = block.attentions[-1]
        batch, _, height, width = hidden.shape
        tokens = transformer.norm(hidden)
        if transformer.use_linear_projection:
            tokens = tokens.permute(0, 2, 3, 1).reshape(batch, height * width, tokens.shape[1])
            tokens = transformer.proj_in(tokens)
        else:
            tokens = transformer.proj_in(tokens)
            tokens = tokens.permute(0, 2, 3, 1).reshape(batch, height * width, tokens.shape[1])
        for tblock in transformer.transformer_blocks[:-1]:
            tokens = tblock(tokens, encoder_hidden_states=encoder_hidden_states)
        last = transformer.transformer_blocks[-1]
        out = last.attn1(last.norm1(tokens),
                         encoder_hidden_states=encoder_hidden_states if last.only_cross_attention else None)
        return out.reshape(batch, height, width, out.shape[-1])


# ------------------------------------------------------------------------------------------------------------
# The encoder
# ------------------------------------------------------------------------------------------------------------

class DiffusionEncoder(FeatureEncoder):
    """DiffCut's diffusion feature extractor (PyTorch): images -> normalised UNet self-attention tokens.

    Build it with :meth:`from_pretrained`; the constructor takes already loaded components (diffusers style).

    Parameters
    ----------
    unet : diffusers.UNet2DConditionModel
        The denoiser, in the compute dtype, on ``device``.
    vae : diffusers.AutoencoderKL
        The autoencoder; it is converted to float32 (kept in float32 whatever the UNet's dtype).
    scheduler : diffusers scheduler or dict
        Any scheduler of the checkpoint (or its config); only its config is used, to build
        ``DDIMScheduler.from_config(config, timestep_spacing="trailing")``.
    prompt_embeds : torch.Tensor
        (1, 77, D) embeddings of the empty prompt (from the pipeline's ``encode_prompt("")``).
    pooled_prompt_embeds : torch.Tensor, optional
        (1, P) pooled embeddings of the empty prompt; required for SDXL-type UNets (``addition_embed_type
        == "text_time"``).
    model : str
        Hub id or folder, for ``name`` and ``describe()``.
    device : str or torch.device
        See :func:`resolve_device`.
    dtype : str or torch.dtype
        Compute dtype of the UNet (see :func:`resolve_dtype`); the VAE always runs in float32.
    timestep : int
        Raw training timestep at which noise is added, in [0, num_train_timesteps). Paper: 50.
    seed : int
        Seed of the noise generator. Paper: 42.

    Attributes
    ----------
    name : str
        e.g. ``"segmind/SSD-1B (torch, fp16, cuda)"``.
    family : {"sdxl", "sd"}
        ``"sdxl"`` for UNets with SDXL's ``text_time`` conditioning (SDXL, SSD-1B, Segmind-Vega), else
        ``"sd"``.
    stride : int
        Pixels per feature token (32 for SD 1.x/2.x and SDXL-type models).
    device : torch.device
    dtype : torch.dtype
        UNet compute dtype.
    hook_path : str
        Dotted path of the hooked ``attn1`` inside the UNet.
    unet, vae, scheduler, truncated_unet
        The components (``scheduler`` is the DDIM one actually used).

    Notes
    -----
    **Noise generator device.** The official code draws the noise with
    ``torch.Generator(device=<its device>)``, i.e. with CUDA's Philox generator when it runs on a GPU. This
    encoder does the same: on CUDA the generator lives on the encoder's CUDA device, which reproduces the
    official noise bit for bit; on any other device it is a CPU generator (then moved). CPU and CUDA noises
    for the same seed therefore differ, exactly as they do in the official code.

    **Precision.** On CUDA with fp16/bf16 the UNet runs under ``torch.autocast`` like the official code (norms
    and softmax in float32); on the CPU it runs plainly in ``dtype``. The text encoders run in ``dtype`` too
    (official: float16 on CUDA).

    References
    ----------
    .. [1] P. Couairon et al., "DiffCut: Catalyzing Zero-Shot Semantic Segmentation with Diffusion
       Features and Recursive Normalized Cut", NeurIPS 2024, arXiv:2406.02842.
    """

    def __init__(self, unet, vae, scheduler, prompt_embeds, pooled_prompt_embeds=None, *, model: str = "",
                 device="auto", dtype="auto", timestep: int = 50, seed: int = 42):
        from diffusers import DDIMScheduler

        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = model
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InputError(f"seed must be an integer, got {seed!r}")
        self.seed = seed

        # The official code swaps the checkpoint's scheduler (Euler for SSD-1B, whose add_noise is
        # sigma-based) for DDIM with trailing spacing; only DDIM's variance-preserving add_noise is used.
        config = scheduler if isinstance(scheduler, dict) else scheduler.config
        self.scheduler = DDIMScheduler.from_config(config, timestep_spacing="trailing")
        n_train = self.scheduler.config.num_train_timesteps
        if isinstance(timestep, bool) or not isinstance(timestep, int) or not 0 <= timestep < n_train:
            raise InputError(f"timestep must be an integer in [0, {n_train - 1}], got {timestep!r}")
        self.timestep = timestep

        self.unet = _to(unet, self.device, self.dtype).eval().requires_grad_(False)
        # fp32 always: the SDXL VAE overflows to NaN in float16 (DIFFCUT.md section 1).
        self.vae = _to(vae, self.device, torch.float32).eval().requires_grad_(False)
        self.truncated_unet = TruncatedUNet(self.unet).eval()
        self.hook_path = self.truncated_unet.hook_path
        self.family = "sdxl" if unet.config.addition_embed_type == "text_time" else "sd"

        # Pixels per token: the VAE's downsampling times one factor 2 per downsampler before the hooked block.
        vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        n_down = sum(1 for blk in self.unet.down_blocks[: self.truncated_unet.block_index]
                     if getattr(blk, "downsamplers", None) is not None)
        self.stride = vae_factor * 2 ** n_down
        self.latent_channels = int(self.vae.config.latent_channels)

        self._prompt_embeds = prompt_embeds.to(device=self.device, dtype=self.dtype)
        self._pooled_prompt_embeds = None
        if self.family == "sdxl":
            if pooled_prompt_embeds is None:
                raise ModelLoadError(f"{model or 'the model'}: an SDXL-type UNet (addition_embed_type="
                                     "'text_time') needs pooled text embeddings, i.e. a pipeline with "
                                     "text_encoder_2")
            self._pooled_prompt_embeds = pooled_prompt_embeds.to(device=self.device, dtype=self.dtype)
            # The consistency check of StableDiffusionXLPipeline._get_add_time_ids, once, at load time.
            expected = self.unet.add_embedding.linear_1.in_features
            passed = 6 * self.unet.config.addition_time_embed_dim + self._pooled_prompt_embeds.shape[-1]
            if expected != passed:
                raise ModelLoadError(f"{model or 'the model'}: the UNet expects an added embedding of "
                                     f"length {expected} but the text encoder gives {passed}; the "
                                     "checkpoint is inconsistent")
        self._noise_cache: Dict[Tuple[int, int], "torch.Tensor"] = {}
        self._time_ids_cache: Dict[Tuple[int, int], "torch.Tensor"] = {}
        self.name = f"{model or 'diffusion'} (torch, {_dtype_name(self.dtype)}, {self.device})"
        # Speed options (configure_speed); all off by default.
        self.compile_mode: Optional[str] = None
        self.channels_last = False
        self.attention = "auto"
        self.cuda_graphs = False
        self._compiled = None
        self._graphs: dict = {}

    def configure_speed(self, *, compile: Optional[str] = None, channels_last: bool = False,
                        attention: str = "auto", cuda_graphs: bool = False) -> "DiffusionEncoder":
        """Set the PyTorch speed options of the truncated UNet (see :class:`~diffcut_engine.config.EngineConfig`).

        Parameters
        ----------
        compile : {None, "default", "reduce-overhead", "max-autotune"}
            Wrap the truncated UNet in ``torch.compile(mode=compile)``, lazily at the first call. If compiling
            fails there (no compiler toolchain, an unsupported op), a warning is logged and the eager module is
            used from then on.
        channels_last : bool
            Convert the UNet to the channels-last memory format; its input latents follow.
        attention : {"auto", "sdpa", "default"}
            ``sdpa``: ``AttnProcessor2_0`` on the truncated UNet's attention modules; ``default``: the classic
            ``AttnProcessor``; ``auto``: leave diffusers' choice.
        cuda_graphs : bool
            Capture the truncated UNet call in a ``torch.cuda.CUDAGraph`` per input shape and replay it.

        Returns
        -------
        DiffusionEncoder
            ``self``.

        Raises
        ------
        InputError
            For an unknown option value, ``cuda_graphs`` off CUDA, or ``compile`` with ``cuda_graphs``.
        """
        from ..config import ATTENTION_MODES, COMPILE_MODES

        if compile is not None and compile not in COMPILE_MODES:
            raise InputError(f"unknown compile mode {compile!r}; choose None or one of {', '.join(COMPILE_MODES)}")
        if attention not in ATTENTION_MODES:
            raise InputError(f"unknown attention {attention!r}; choose one of {', '.join(ATTENTION_MODES)}")
        if cuda_graphs and self.device.type != "cuda":
            raise InputError(f"cuda_graphs=True needs CUDA; this encoder runs on {self.device}")
        if cuda_graphs and compile is not None:
            raise InputError("compile and cuda_graphs cannot be combined; compile='reduce-overhead' already "
                             "uses CUDA graphs")
        if attention != "auto":
            from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

            processor = AttnProcessor2_0 if attention == "sdpa" else AttnProcessor
            for block in self.unet.down_blocks[: self.truncated_unet.block_index + 1]:
                for module in block.modules():
                    if isinstance(module, Attention):
                        module.set_processor(processor())
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        self.compile_mode, self.channels_last = compile, bool(channels_last)
        self.attention, self.cuda_graphs = attention, bool(cuda_graphs)
        self._compiled, self._graphs = None, {}
        return self

    # --------------------------------------------------------------------------------------------------------
    # Loading
    # --------------------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, model: str, *, revision: Optional[str] = None, device="auto", dtype="auto",
                        timestep: int = 50, seed: int = 42,
                        local_files_only: bool = False) -> "DiffusionEncoder":
        """Load an SD 1.x/2.x or SDXL-type diffusers pipeline and compute its empty-prompt conditioning.

        Only the VAE, the UNet, the scheduler config and the text encoder(s) with their tokenizer(s) are
        loaded; other components (safety checker, feature extractor, image encoder) are skipped. The text
        encoders are used once, for ``encode_prompt("")``, and then released.

        Parameters
        ----------
        model : str
            Hugging Face hub id (e.g. ``"segmind/SSD-1B"``), a local folder written by ``save_pretrained``, or
            one of the official short names (``"SSD-1B"``, ``"SSD-vega"``, ``"SD1.4"``).
        revision : str, optional
            Hub branch, tag or commit.
        device : {"auto", "cpu", "cuda", "cuda:N"} or torch.device
            ``auto``: CUDA when available.
        dtype : {"auto", "fp32", "fp16", "bf16"} or torch.dtype
            UNet and text-encoder precision. ``auto``: fp16 on CUDA, fp32 elsewhere. The VAE is loaded in
            fp32.
        timestep : int
            Raw training timestep for the noise (paper: 50).
        seed : int
            Noise seed (paper: 42).
        local_files_only : bool
            Never touch the network (also implied by ``HF_HUB_OFFLINE=1``).

        Returns
        -------
        DiffusionEncoder

        Raises
        ------
        ModelLoadError
            If the folder does not exist, the hub id cannot be resolved or downloaded, or the checkpoint is
            not an SD/SDXL-type pipeline (one line, naming ``model``).
        InputError
            If ``device`` or ``dtype`` is invalid.
        """
        require("diffusers", "the diffusion encoder")
        require("transformers", "the diffusion encoder's text encoders")
        import diffusers
        from diffusers import DiffusionPipeline

        from ..config import MODEL_ALIASES

        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        if not isinstance(model, str) or not model:
            raise InputError(f"model must be a hub id or a folder, got {model!r}")
        model = MODEL_ALIASES.get(model, model)  # "SSD-1B" -> "segmind/SSD-1B", the official short names
        # Cheap checks first, before anything is loaded.
        if isinstance(timestep, bool) or not isinstance(timestep, int) or timestep < 0:
            raise InputError(f"timestep must be a non-negative integer (a raw training timestep), "
                             f"got {timestep!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InputError(f"seed must be an integer, got {seed!r}")
        if _looks_like_path(model):
            folder = os.path.expanduser(model)
            if os.path.isfile(folder):
                raise ModelLoadError(f"model {model!r} is a file; a diffusers pipeline folder (with "
                                     "model_index.json) is needed, single-file checkpoints are not supported")
            if not os.path.isdir(folder):
                raise ModelLoadError(f"model folder {model!r} does not exist")
            model = folder

        common = dict(revision=revision, local_files_only=local_files_only)
        # 1. Read model_index.json and check that this is a text-conditioned SD/SDXL-type pipeline.
        try:
            index = DiffusionPipeline.load_config(model, **common)
        except (OSError, ValueError) as exc:
            where = "" if os.path.isdir(model) else _hub_context(local_files_only)
            raise ModelLoadError(f"could not load diffusers pipeline {model!r}{where}: "
                                 f"{_first_line(exc)}") from exc
        _check_pipeline_index(model, index)

        # 2. The VAE in fp32 from the checkpoint's own weights, then the rest in `dtype`; unused components
        #    (safety checker, feature extractor, image encoder) are passed as None so they are not loaded.
        skipped = {name: None for name, spec in index.items()
                   if not name.startswith("_") and isinstance(spec, (list, tuple))
                   and name not in _NEEDED_COMPONENTS}
        if "requires_safety_checker" in index:
            skipped["requires_safety_checker"] = False
        try:
            vae_cls = getattr(diffusers, index["vae"][1])
            dtype_kw = _dtype_keyword()
            vae = vae_cls.from_pretrained(model, subfolder="vae", **{dtype_kw: torch.float32}, **common)
            pipe = DiffusionPipeline.from_pretrained(model, **{dtype_kw: dtype}, vae=vae, **skipped, **common)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, ImportError) as exc:
            raise ModelLoadError(f"could not load diffusers pipeline {model!r}: {_first_line(exc)}") from exc

        # 3. Empty-prompt conditioning, once, with the pipeline's own encode_prompt; no CFG.
        for name in ("text_encoder", "text_encoder_2"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.to(device)
        with torch.no_grad():
            out = pipe.encode_prompt(prompt="", device=device, num_images_per_prompt=1,
                                     do_classifier_free_guidance=False)
        prompt_embeds = out[0]
        pooled = out[2] if len(out) == 4 else None

        encoder = cls(pipe.unet, vae, pipe.scheduler, prompt_embeds, pooled, model=model, device=device,
                      dtype=dtype, timestep=timestep, seed=seed)
        # 4. Release the text encoders and tokenizers: the conditioning is cached.
        del pipe, out
        if device.type == "cuda":
            torch.cuda.empty_cache()
        logger.info("loaded %s; hooked module %s; grid stride %d px", encoder.name, encoder.hook_path,
                    encoder.stride)
        return encoder

    # --------------------------------------------------------------------------------------------------------
    # The pieces
    # --------------------------------------------------------------------------------------------------------

    def encode_latents(self, pixels) -> "torch.Tensor":
        """VAE posterior mean times the VAE's scaling factor, in float32.

        Parameters
        ----------
        pixels : torch.Tensor
            (B, 3, H, W) images in [-1, 1].

        Returns
        -------
        torch.Tensor
            (B, 4, H/8, W/8) float32 latents on ``self.device``.
        """
        return self._latents(self.check_pixels(pixels))

    def noise(self, latent_size: Tuple[int, int]) -> "torch.Tensor":
        """The seeded noise for one latent size, drawn once and cached.

        Parameters
        ----------
        latent_size : (int, int)
            (h_lat, w_lat).

        Returns
        -------
        torch.Tensor
            (1, 4, h_lat, w_lat) float32 standard normal noise on ``self.device``, from a generator seeded
            ``seed`` (on the CUDA device when running on CUDA, else on the CPU; see the class notes).
        """
        key = (int(latent_size[0]), int(latent_size[1]))
        noise = self._noise_cache.get(key)
        if noise is None:
            gen_device = self.device if self.device.type == "cuda" else torch.device("cpu")
            generator = torch.Generator(device=gen_device).manual_seed(self.seed)
            noise = torch.randn((1, self.latent_channels) + key, generator=generator, device=gen_device,
                                dtype=torch.float32).to(self.device)
            self._noise_cache[key] = noise
        return noise

    def timesteps(self, batch_size: int) -> "torch.Tensor":
        """(B,) int64 tensor filled with ``timestep``, on ``self.device``."""
        return torch.full((batch_size,), self.timestep, dtype=torch.long, device=self.device)

    def add_noise(self, latents) -> "torch.Tensor":
        """DDIM ``add_noise`` at ``timestep`` with the shared seeded noise.

        Parameters
        ----------
        latents : torch.Tensor
            (B, 4, h_lat, w_lat) float32 latents.

        Returns
        -------
        torch.Tensor
            (B, 4, h_lat, w_lat) float32 ``sqrt(abar_t) * latents + sqrt(1 - abar_t) * noise``; the same noise
            for every image.
        """
        noise = self.noise(latents.shape[-2:]).expand_as(latents)
        return self.scheduler.add_noise(latents, noise, self.timesteps(latents.shape[0]))

    def conditioning(self, height: int, width: int, batch_size: int):
        """Cached empty-prompt conditioning for a batch of ``batch_size`` images of ``height`` x ``width`` px.

        Returns
        -------
        encoder_hidden_states : torch.Tensor
            (B, 77, D) prompt embeddings in ``dtype`` (an expanded view of the cached (1, 77, D) tensor).
        added_cond_kwargs : dict or None
            SDXL-type models: ``{"text_embeds": (B, P), "time_ids": (B, 6)}`` with time ids
            ``[height, width, 0, 0, height, width]`` (original size, crop top-left, target size, as
            ``StableDiffusionXLPipeline._get_add_time_ids``); ``None`` for SD 1.x/2.x.
        """
        hidden = self._prompt_embeds.expand(batch_size, -1, -1)
        if self.family != "sdxl":
            return hidden, None
        key = (int(height), int(width))
        time_ids = self._time_ids_cache.get(key)
        if time_ids is None:
            time_ids = torch.tensor([[key[0], key[1], 0, 0, key[0], key[1]]], dtype=self._prompt_embeds.dtype,
                                    device=self.device)
            self._time_ids_cache[key] = time_ids
        return hidden, {"text_embeds": self._pooled_prompt_embeds.expand(batch_size, -1),
                        "time_ids": time_ids.expand(batch_size, -1)}

    @property
    def hooked_module(self):
        """The hooked ``attn1`` module itself (for forward hooks)."""
        return self.unet.get_submodule(self.hook_path)

    # --------------------------------------------------------------------------------------------------------
    # Encoding
    # --------------------------------------------------------------------------------------------------------

    def encode(self, pixels) -> "torch.Tensor":
        """Encode images into DiffCut features.

        Parameters
        ----------
        pixels : torch.Tensor
            (B, 3, H, W) float images with values in [-1, 1] (any device); H and W multiples of ``stride``
            (32).

        Returns
        -------
        torch.Tensor
            (B, H/32, W/32, C) float32 features, L2-normalised over C, on ``self.device``. C is the channel
            count of the hooked block (1280 for SSD-1B and SD 1.4).

        Raises
        ------
        InputError
            If ``pixels`` has the wrong shape, size or dtype, or contains NaN.
        """
        pixels = self.check_pixels(pixels)
        with torch.no_grad():
            noisy = self._noisy_latents(pixels)
            with self._unet_precision():
                tokens = self._truncated_forward(noisy, pixels.shape[-2], pixels.shape[-1])
            return _normalize(tokens)

    def full_unet_hook_features(self, pixels) -> "torch.Tensor":
        """The same features, computed the official way: whole UNet, forward hook on ``attn1``.

        For parity tests only: about twice the UNet cost of :meth:`encode`.

        Parameters
        ----------
        pixels : torch.Tensor
            (B, 3, H, W) images in [-1, 1].

        Returns
        -------
        torch.Tensor
            (B, H/32, W/32, C) float32 normalised features, on ``self.device``.
        """
        pixels = self.check_pixels(pixels)
        b, _, height, width = pixels.shape
        captured = {}

        def keep_output(module, args, output):
            captured["tokens"] = output.detach()

        with torch.no_grad():
            noisy = self._noisy_latents(pixels)
            hidden, added = self.conditioning(height, width, b)
            handle = self.hooked_module.register_forward_hook(keep_output)
            try:
                with self._unet_precision():
                    self.unet(noisy.to(self.dtype), self.timesteps(b), encoder_hidden_states=hidden,
                              added_cond_kwargs=added)
            finally:
                handle.remove()
            tokens = captured["tokens"]
            grid = (b, height // self.stride, width // self.stride, tokens.shape[-1])
            return _normalize(tokens.reshape(grid))

    def describe(self) -> dict:
        """Facts for logs and ``diffcut info``."""
        info = super().describe()
        info.update({
            "backend": "torch",
            "model": self.model,
            "dtype": _dtype_name(self.dtype),
            "vae_dtype": "fp32",
            "hook_path": self.hook_path,
            "timestep": self.timestep,
            "seed": self.seed,
            "scheduler": "DDIMScheduler(timestep_spacing='trailing')",
            "prompt_embeds_shape": tuple(self._prompt_embeds.shape),
            "compile": self.compile_mode,
            "channels_last": self.channels_last,
            "attention": self.attention,
            "cuda_graphs": self.cuda_graphs,
        })
        if self._pooled_prompt_embeds is not None:
            info["pooled_prompt_embeds_shape"] = tuple(self._pooled_prompt_embeds.shape)
        return info

    # --------------------------------------------------------------------------------------------------------
    # Internals
    # --------------------------------------------------------------------------------------------------------

    def _latents(self, pixels):
        # fp32 whatever the surrounding autocast says: the SDXL VAE overflows in fp16.
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            posterior = self.vae.encode(pixels).latent_dist
            return posterior.mean * self.vae.config.scaling_factor

    def _noisy_latents(self, pixels):
        return self.add_noise(self._latents(pixels))

    def _truncated_forward(self, noisy, height, width):
        b = noisy.shape[0]
        hidden, added = self.conditioning(height, width, b)
        text_embeds, time_ids = (added["text_embeds"], added["time_ids"]) if added else (None, None)
        # DDIM's scale_model_input is the identity; the UNet takes the latents in its own dtype.
        noisy = self.scheduler.scale_model_input(noisy, self.timestep).to(self.dtype)
        if self.channels_last:
            noisy = noisy.contiguous(memory_format=torch.channels_last)
        args = (noisy, self.timesteps(b), hidden, text_embeds, time_ids)
        if self.cuda_graphs:
            return self._graph_call(args)
        if self.compile_mode is not None:
            return self._compiled_call(args)
        return self.truncated_unet(*args)

    def _compiled_call(self, args):
        # Compiled lazily at the first call; any failure there falls back to eager for good (never wrong output).
        if self._compiled is None:
            try:
                self._compiled = torch.compile(self.truncated_unet, mode=self.compile_mode)
            except Exception as exc:  # noqa: BLE001  (torch.compile itself refusing, e.g. unsupported Python)
                return self._compile_failed(exc, args)
        if self._compiled is False:
            return self.truncated_unet(*args)
        try:
            return self._compiled(*args)
        except Exception as exc:  # noqa: BLE001  (inductor/dynamo errors of many types)
            return self._compile_failed(exc, args)

    def _compile_failed(self, exc, args):
        logger.warning("torch.compile(mode=%r) of the truncated UNet failed (%s: %s); running it eagerly",
                       self.compile_mode, type(exc).__name__, _first_line(exc))
        self._compiled = False
        return self.truncated_unet(*args)

    def _graph_call(self, args):
        # One CUDA graph per input shape: captured on first sight (after a warm-up on a side stream), then
        # replayed with the inputs copied into its static buffers. The output is cloned out of the graph's pool.
        key = tuple(None if a is None else (tuple(a.shape), a.dtype) for a in args)
        entry = self._graphs.get(key)
        if entry is None:
            static_in = [None if a is None else a.clone() for a in args]
            stream = torch.cuda.Stream(device=self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self.truncated_unet(*static_in)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.truncated_unet(*static_in)
            entry = self._graphs[key] = (graph, static_in, static_out)
            logger.info("captured a CUDA graph of the truncated UNet for input shape %s", tuple(args[0].shape))
        graph, static_in, static_out = entry
        for dst, src in zip(static_in, args):
            if dst is not None:
                dst.copy_(src)
        graph.replay()
        return static_out.clone()

    def _unet_precision(self):
        # On CUDA the official code runs the fp16 UNet under fp16 autocast (norms/softmax in fp32): same here.
        # The autocast weight cache is off under CUDA graphs: cached casts must not outlive a capture.
        if self.device.type == "cuda" and self.dtype != torch.float32:
            return torch.autocast("cuda", dtype=self.dtype, cache_enabled=not self.cuda_graphs)
        return contextlib.nullcontext()


def _to(module, device, dtype):
    # Cast only when needed: diffusers warns about `.to(dtype)` on models even when the dtype is unchanged.
    if module.dtype != dtype:
        module = module.to(dtype=dtype)
    return module.to(device=device)


def _dtype_keyword() -> str:
    # diffusers renamed `torch_dtype` to `dtype` (and deprecated the old name) in its 0.3x series; older
    # releases (>= 0.27 is supported) only know `torch_dtype`.
    from diffusers.utils import deprecation_utils
    return "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"


def _normalize(tokens):
    # L2 over channels in float32, as the official generate_masks does before building the affinity.
    return torch.nn.functional.normalize(tokens.float(), dim=-1)


def _looks_like_path(model: str) -> bool:
    # Hub ids look like "org/name"; anything absolute, relative-dotted, home-based or existing is a folder.
    return (os.path.isabs(model) or model.startswith((".", "~")) or os.path.exists(model)
            or model.count("/") > 1 or "\\" in model)


def _hub_context(local_files_only: bool) -> str:
    try:
        from huggingface_hub import constants
        offline = bool(getattr(constants, "HF_HUB_OFFLINE", False))
    except ImportError:
        offline = False
    if offline or local_files_only:
        return " (offline: only the local Hugging Face cache was searched)"
    return " from the Hugging Face hub"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_pipeline_index(model: str, index: dict) -> None:
    """Refuse a model_index.json that is not a text-conditioned SD/SDXL-type pipeline, before any weights."""
    def cls_of(name):
        spec = index.get(name)
        return spec[1] if isinstance(spec, (list, tuple)) and len(spec) == 2 and spec[1] else None

    kind = index.get("_class_name", "unknown pipeline")
    if cls_of("unet") != "UNet2DConditionModel":
        raise ModelLoadError(f"{model!r} is a {kind} without a UNet2DConditionModel, "
                             "not an SD/SDXL-type pipeline")
    if cls_of("vae") is None:
        raise ModelLoadError(f"{model!r} is a {kind} without a VAE, not an SD/SDXL-type pipeline")
    if cls_of("text_encoder") is None and cls_of("text_encoder_2") is None:
        raise ModelLoadError(f"{model!r} is a {kind} without a text encoder, not an SD/SDXL-type pipeline")
    if cls_of("scheduler") is None:
        raise ModelLoadError(f"{model!r} is a {kind} without a scheduler, not an SD/SDXL-type pipeline")
