"""Figures: numpy arrays in, matplotlib Figures out (common: what they share and save_figure;
figures: the pipeline and predict; faithfulness: the faithfulness stage)."""
