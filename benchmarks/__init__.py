"""Measurement tools, kept out of the installed package (as timm and nanoGPT keep theirs): the
model, attention, loop, precision and data-pipeline bench (bench, bench_*), the training-step
profiler (profiling) and the one-go GPU check (gpucheck). They run from a checkout, with
vitlens importable (the venv, or PYTHONPATH=src), from the repository root:

    python -m benchmarks.bench [--quick]                      make bench
    PYTHONPATH=src python -m benchmarks.gpucheck --archive ...  make gpu-check

The training step they time is the package's own (vitlens.train.harness), as `vitlens
cpu-preset` times it; nothing in the package imports from here."""
