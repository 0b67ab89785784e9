"""vitlens: train a Vision Transformer on CIFAR-10 and show where it looks."""

__version__ = "0.1.0"
