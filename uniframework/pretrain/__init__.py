"""Self-supervised pretraining: masked image modelling.

- `masking`: pure mask generators (MAE random masking, SimMIM mask patches, BEiT/iBOT
  block-wise masks) and `patchify` / `unpatchify`.
- `pos_embed`: fixed 2-D sin-cos position embeddings (MAE).
- `mae`: Masked Autoencoders (He et al., CVPR 2022, arXiv 2111.06377).
- `simmim`: SimMIM (Xie et al., CVPR 2022, arXiv 2111.09886) on timm ViT and Swin.

Modules here are plain `nn.Module`s and functions; the pretrain stage wires them into training.
"""
