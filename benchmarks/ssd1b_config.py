"""SSD-1B's UNet configuration (DIFFCUT.md section 8), for benchmarks without the real weights."""

SSD1B_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    transformer_layers_per_block=[[1], [2, 2], [4, 4]],
    reverse_transformer_layers_per_block=[[4, 4, 10], [2, 1, 1], 1],
    mid_block_type="UNetMidBlock2D",
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    use_linear_projection=True,
)


def build_random_unet(seed: int = 0):
    """SSD-1B-sized UNet with cheap random weights (built on the meta device, then filled uniformly)."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SSD1B_UNET)
    unet = unet.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if p.ndim > 1:
                bound = (1.0 / p[0].numel()) ** 0.5
                p.uniform_(-bound, bound, generator=g)
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
        for _, b in unet.named_buffers():
            b.zero_()
    return unet.eval()
