"""rayrec.platform.preprocessing."""
