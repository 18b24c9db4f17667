"""Measurements of exported models: in QEMU (instructions per step, per layer, per phase), in the
TFLM runtime, and the shared comparison of scores against the integer reference."""
