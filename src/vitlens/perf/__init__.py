"""How fast it runs: one synced timer (timing), the model and data-pipeline bench (bench,
bench_data, bench_report) and the training-step profiler (profiling)."""
