"""The one-go check on a CUDA machine (check), its step runner with the time budget (runner)
and the recipe search chosen on validation (search). `python -m benchmarks.gpucheck` runs it."""
