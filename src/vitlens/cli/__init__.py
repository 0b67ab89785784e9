"""The commands outside the DVC pipeline: predict, reproduce, ui, and `vitlens` (main), which
runs them and the bench and GPU check by name."""
