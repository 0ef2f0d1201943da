"""rayrec.models."""
