"""rayrec.platform.tuning."""
