"""Framework bindings and executors at the edges: PyTorch, transformers, Dask, numcodecs and Zarr."""
