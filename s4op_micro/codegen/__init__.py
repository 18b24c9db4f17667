"""Int8 model -> files: the C model (Jinja), the TFLM flatbuffer and app glue, and the project
files that build a firmware (flags, linker script, Makefile, CMakeLists.txt). One Jinja environment."""
