"""The DiffCut encoder on a Stable Diffusion / SDXL-type UNet (the PyTorch reference backend).

Images become features in five steps, as the official DiffCut extractor (docs/ALGORITHM.md, "Features"): the VAE
posterior mean in float32; DDIM noise at timestep 50 from a generator seeded 42, shared by the batch; the cached
empty-prompt conditioning (:mod:`.conditioning`); the UNet truncated after the hooked self-attention
(:mod:`.truncated_unet`); L2 normalisation over channels. Loading and its checks are in :mod:`.loading`, the speed
options in :mod:`.speed`.

Deliberate differences from the official code: the UNet is truncated (identical result, tested); the VAE weights are
loaded in float32 from the checkpoint (the official code loads them in float16 and upcasts the computation);
``time_ids`` follow the batch's actual (H, W), which is the official ``[1024, 1024, 0, 0, 1024, 1024]`` at 1024 px.
"""

from __future__ import annotations

import logging
from typing import Dict, Optional, Tuple

from ..config import check_seed
from ..errors import InputError, ModelLoadError
from .base import FeatureEncoder, dtype_name, resolve_device, resolve_dtype, torch
from .conditioning import EmptyPromptConditioning, encode_empty_prompt
from .loading import first_line, load_pipeline, looks_like_path, resolve_model
from .speed import (CUDAGraphs, LazyCompiled, check_speed_options, set_attention_processor, unet_autocast,
                    vae_precision)
from .truncated_unet import TruncatedUNet, find_hooked_attention

logger = logging.getLogger(__name__)

__all__ = ["DiffusionEncoder", "TruncatedUNet", "find_hooked_attention", "resolve_device", "resolve_dtype"]

# Kept for diffcut_engine.encoders.onnx_export, which imports these names from here; the public homes are
# base.dtype_name and loading.looks_like_path.
_dtype_name, _looks_like_path = dtype_name, looks_like_path


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
    vae_tf32 : bool
        Allow TF32 convolutions in the float32 VAE on CUDA (default True, PyTorch's default, under which the
        official code ran); False gives IEEE float32 convolutions. See :func:`.speed.vae_precision`.

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
    (official: float16 on CUDA). The VAE runs in float32, with TF32 convolutions on CUDA unless ``vae_tf32=False``.

    References
    ----------
    .. [1] P. Couairon et al., "DiffCut: Catalyzing Zero-Shot Semantic Segmentation with Diffusion
       Features and Recursive Normalized Cut", NeurIPS 2024, arXiv:2406.02842.
    """

    def __init__(self, unet, vae, scheduler, prompt_embeds, pooled_prompt_embeds=None, *, model: str = "",
                 device="auto", dtype="auto", timestep: int = 50, seed: int = 42, vae_tf32: bool = True):
        from diffusers import DDIMScheduler

        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = model
        self.seed = check_seed(seed)
        if not isinstance(vae_tf32, bool):
            raise InputError(f"vae_tf32 must be True or False, got {vae_tf32!r}")
        self.vae_tf32 = vae_tf32

        # The official code swaps the checkpoint's scheduler (Euler for SSD-1B, whose add_noise is
        # sigma-based) for DDIM with trailing spacing; only DDIM's variance-preserving add_noise is used.
        config = scheduler if isinstance(scheduler, dict) else scheduler.config
        self.scheduler = DDIMScheduler.from_config(config, timestep_spacing="trailing")
        n_train = self.scheduler.config.num_train_timesteps
        if isinstance(timestep, bool) or not isinstance(timestep, int) or not 0 <= timestep < n_train:
            raise InputError(f"timestep must be an integer in [0, {n_train - 1}], got {timestep!r}")
        self.timestep = timestep

        self.unet = _to(unet, self.device, self.dtype).eval().requires_grad_(False)
        # fp32 always: the SDXL VAE overflows to NaN in float16 (docs/ALGORITHM.md, "Features").
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

        self._conditioning = EmptyPromptConditioning(self.unet, prompt_embeds, pooled_prompt_embeds,
                                                     device=self.device, dtype=self.dtype, model=model)
        self._noise_cache: Dict[Tuple[int, int], "torch.Tensor"] = {}
        self.name = f"{model or 'diffusion'} (torch, {dtype_name(self.dtype)}, {self.device})"
        # Speed options (configure_speed); all off by default.
        self.compile_mode: Optional[str] = None
        self.channels_last = False
        self.attention = "auto"
        self.cuda_graphs = False
        self._runner = self.truncated_unet  # what runs the truncated UNet: eager, LazyCompiled or CUDAGraphs

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
            Capture the truncated UNet call in a ``torch.cuda.CUDAGraph`` per input shape and replay it
            (:class:`.speed.CUDAGraphs`).

        Returns
        -------
        DiffusionEncoder
            ``self``.

        Raises
        ------
        InputError
            For an unknown option value, ``cuda_graphs`` off CUDA, or ``compile`` with ``cuda_graphs``.
        """
        check_speed_options(compile=compile, attention=attention, cuda_graphs=cuda_graphs, device=self.device)
        set_attention_processor(self.unet.down_blocks[: self.truncated_unet.block_index + 1], attention)
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        self.compile_mode, self.channels_last = compile, bool(channels_last)
        self.attention, self.cuda_graphs = attention, bool(cuda_graphs)
        if cuda_graphs:
            self._runner = CUDAGraphs(self.truncated_unet, self.device)
        elif compile is not None:
            self._runner = LazyCompiled(self.truncated_unet, compile)
        else:
            self._runner = self.truncated_unet
        return self

    # --------------------------------------------------------------------------------------------------------
    # Loading
    # --------------------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, model: str, *, revision: Optional[str] = None, device="auto", dtype="auto",
                        timestep: int = 50, seed: int = 42, local_files_only: bool = False,
                        vae_tf32: bool = True) -> "DiffusionEncoder":
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
        vae_tf32 : bool
            Allow TF32 convolutions in the float32 VAE on CUDA (default True, as the official code ran).

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
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        # Cheap checks first, before anything is loaded.
        if isinstance(timestep, bool) or not isinstance(timestep, int) or timestep < 0:
            raise InputError(f"timestep must be a non-negative integer (a raw training timestep), "
                             f"got {timestep!r}")
        check_seed(seed)
        if not isinstance(vae_tf32, bool):
            raise InputError(f"vae_tf32 must be True or False, got {vae_tf32!r}")
        model = resolve_model(model)
        # 1-2. model_index.json checked, then the VAE in fp32 and the other needed components in `dtype`.
        pipe, vae = load_pipeline(model, dtype=dtype, revision=revision, local_files_only=local_files_only)
        # 3. Empty-prompt conditioning, once, with the pipeline's own encode_prompt; no CFG.
        for coder, tokenizer in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
            if getattr(pipe, coder, None) is not None and getattr(pipe, tokenizer, None) is None:
                raise ModelLoadError(f"{model!r} has a {coder} but no {tokenizer}; the model folder is incomplete")
        try:
            prompt_embeds, pooled = encode_empty_prompt(pipe, device)
        except (OverflowError, ValueError, TypeError, AttributeError, IndexError, RuntimeError) as exc:
            raise ModelLoadError(f"{model!r}: its text encoders could not encode the empty prompt "
                                 f"({type(exc).__name__}: {first_line(exc)}); the model folder is damaged") from exc
        encoder = cls(pipe.unet, vae, pipe.scheduler, prompt_embeds, pooled, model=model, device=device,
                      dtype=dtype, timestep=timestep, seed=seed, vae_tf32=vae_tf32)
        # 4. Release the text encoders and tokenizers: the conditioning is cached.
        del pipe
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
        return self._conditioning(height, width, batch_size)

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
            "dtype": dtype_name(self.dtype),
            "vae_dtype": "fp32",
            "vae_tf32": self.vae_tf32,
            "hook_path": self.hook_path,
            "timestep": self.timestep,
            "seed": self.seed,
            "scheduler": "DDIMScheduler(timestep_spacing='trailing')",
            "prompt_embeds_shape": tuple(self._conditioning.prompt_embeds.shape),
            "compile": self.compile_mode,
            "channels_last": self.channels_last,
            "attention": self.attention,
            "cuda_graphs": self.cuda_graphs,
        })
        pooled = self._conditioning.pooled_prompt_embeds
        if pooled is not None:
            info["pooled_prompt_embeds_shape"] = tuple(pooled.shape)
        return info

    # --------------------------------------------------------------------------------------------------------
    # Internals
    # --------------------------------------------------------------------------------------------------------

    def _latents(self, pixels):
        # fp32 whatever the surrounding autocast says: the SDXL VAE overflows in fp16.
        with torch.no_grad(), vae_precision(self.device, tf32=self.vae_tf32):
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
        return self._runner(noisy, self.timesteps(b), hidden, text_embeds, time_ids)

    def _unet_precision(self):
        # On CUDA the official code runs the fp16 UNet under fp16 autocast (norms/softmax in fp32): same here.
        return unet_autocast(self.device, self.dtype, cuda_graphs=self.cuda_graphs)


def _to(module, device, dtype):
    # Cast only when needed: diffusers warns about `.to(dtype)` on models even when the dtype is unchanged.
    if module.dtype != dtype:
        module = module.to(dtype=dtype)
    return module.to(device=device)


def _normalize(tokens):
    # L2 over channels in float32, as the official generate_masks does before building the affinity.
    return torch.nn.functional.normalize(tokens.float(), dim=-1)
