"""rayrec.platform.training."""
