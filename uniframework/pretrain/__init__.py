"""Self-supervised pretraining: masked image modelling, the pretrain stage and its parts.

- `masking`: pure mask generators (MAE random masking, SimMIM mask patches, BEiT/iBOT
  block-wise masks) and `patchify` / `unpatchify`.
- `pos_embed`: fixed 2-D sin-cos position embeddings (MAE).
- `mae`: Masked Autoencoders (He et al., CVPR 2022, arXiv 2111.06377).
- `simmim`: SimMIM (Xie et al., CVPR 2022, arXiv 2111.09886) on timm ViT and Swin.
- `ibot`, `ibot_loss`: iBOT (Zhou et al., ICLR 2022, arXiv 2111.07832): EMA teacher (online
  tokenizer), heads, [CLS] + masked-patch self-distillation, schedules.
- `module`: the `Method` registry (`METHODS`), MAE / SimMIM adapters, `PretrainModule`.
- `ibot_method`: iBOT's adapter (`method: ibot`): multi-crop, recipe, teacher hooks.
- `evaluation`: frozen-feature k-NN and linear probe; `figures`: per-epoch figures.
- `stage`: the `pretrain` stage and its options.

The model files are plain `nn.Module`s and functions; `module` and `stage` wire them into
training.
"""
