"""s4op-micro: S4/S4D sequence models from PyTorch to Cortex-M, with operator-level pruning."""

__version__ = "0.1.0"
