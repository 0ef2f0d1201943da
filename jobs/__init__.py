"""rayrec.jobs."""
