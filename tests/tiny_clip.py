"""Tiny random CLIP models of both kinds, built from config and saved to a folder (nothing downloaded).

- :func:`make_tiny_transformers_clip`: a transformers ``CLIPModel`` (ViT, patch 8) with the byte-level
  ``CLIPTokenizer`` of ``tiny_models.make_tiny_tokenizer``, saved with ``save_pretrained``;
- :func:`make_tiny_open_clip`: an open_clip CLIP with a timm ``convnext_atto`` tower in the layout of the official
  ``convnext_large_d_320`` (``timm_pool=""``, ``timm_proj="mlp"``), saved as ``open_clip_config.json`` and
  ``open_clip_model.safetensors`` (needs open_clip).

Text widths are 64 so that the 42 prompts of three one-synonym classes can be planted exactly (tests plant the
text projection so that every prompt of class c embeds to a chosen vector).
"""

from __future__ import annotations

import json
import os

import torch


def make_tiny_transformers_clip(path) -> str:
    from tiny_models import make_tiny_tokenizer
    from transformers import CLIPConfig, CLIPModel

    tok = make_tiny_tokenizer()
    text = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=32,
                  patch_size=8)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    path = os.fspath(path)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


OPEN_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"timm_model_name": "convnext_atto", "timm_model_pretrained": False, "timm_pool": "",
                   "timm_proj": "mlp", "timm_drop": 0.0, "timm_drop_path": 0.0, "image_size": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


def make_tiny_open_clip(path) -> str:
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.CLIP(**OPEN_CLIP_CFG)
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "open_clip_config.json"), "w") as fh:
        json.dump({"model_cfg": OPEN_CLIP_CFG, "preprocess_cfg": {}}, fh)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              os.path.join(path, "open_clip_model.safetensors"))
    return path
