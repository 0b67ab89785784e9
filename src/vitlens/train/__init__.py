"""Training: plan (a run's device, precision and split, decided once), loop, step, ema,
checkpoint, distributed (torchrun), evaluation, harness (the timed step), preset (the CPU's)."""
