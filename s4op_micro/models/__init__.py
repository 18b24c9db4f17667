"""Models: S4D and S4 kernels, the SSM layer with operator bypass, and the sequence classifier."""

from .classifier import DEFAULTS, SequenceClassifier
from .layer import SSMLayer
from .s4 import S4Kernel
from .s4d import S4DKernel

__all__ = ["DEFAULTS", "SequenceClassifier", "SSMLayer", "S4Kernel", "S4DKernel"]
