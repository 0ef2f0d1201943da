"""rayrec.ops_kernels."""
