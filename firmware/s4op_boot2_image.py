#!/usr/bin/env python3
"""RP2040 boot2 image for the exported Makefile / CMakeLists.txt (what `s4op-micro build` does
internally): pad the assembled second stage (raw binary, from `objcopy -O binary -j .text`) to 252
bytes, append its CRC-32/MPEG-2 (the boot ROM's check) and write it as a C array in section .boot2.

    python3 s4op_boot2_image.py boot2.bin s4op_boot2_image.c
"""
import sys


def crc32_mpeg2(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if crc & 0x80000000 else (crc << 1) & 0xFFFFFFFF
    return crc


def write_image(raw_path, c_path):
    """Also used by `s4op-micro build` (s4op_micro/firmware.py), so both builds agree byte for byte."""
    with open(raw_path, "rb") as f:
        code = f.read()
    if len(code) > 252:
        raise ValueError(f"boot2 is {len(code)} bytes, more than the 252 the RP2040 boot ROM loads")
    image = code.ljust(252, b"\0")
    image += crc32_mpeg2(image).to_bytes(4, "little")
    with open(c_path, "w") as f:
        f.write("/* RP2040 boot2 + CRC32, generated from s4op_boot2_rp2040.S */\n#include <stdint.h>\n"
                '__attribute__((section(".boot2"), used)) const uint8_t s4op_boot2[256] = {\n'
                + ",".join(str(b) for b in image) + "\n};\n")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    try:
        write_image(sys.argv[1], sys.argv[2])
    except ValueError as e:
        sys.exit(str(e))
