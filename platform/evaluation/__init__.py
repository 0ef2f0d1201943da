"""rayrec.platform.evaluation."""
