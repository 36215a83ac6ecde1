"""Array operations. Each module has a NumPy path and a CUDA path with the same contract."""
