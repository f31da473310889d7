"""Novel class discovery (the `discover` stage): OpenMix, k-means, a Sinkhorn head."""
