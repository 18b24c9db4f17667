"""Float model -> int8 model: discretize, calibrate and quantize (TFLite/TFLM int8 scheme, integer
maths in intmath), the numpy integer reference that defines the C bit for bit, quantization-aware
fine-tuning, the int8 model on disk, and its cost from shapes. See docs/integer_contract.md."""
