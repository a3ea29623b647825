"""Partitioned, layer-wise inference of native models on Dask or Ray (issue 18); see docs/scaling.md."""
