"""rayrec.serve_apps."""
