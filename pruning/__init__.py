"""Model-side pruning: architecture adapters, block-wise calibration, scores, masks, perplexity."""
