"""Compilers and emulators: building a firmware, the host run, QEMU, the firmware's output records,
and a real board's flash and serial port."""
