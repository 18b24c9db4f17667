"""Compiling: a firmware for a board (or the host) from an export directory, and the size of the
model alone for a board's core. Every tool runs through core.proc.run_tool; progress goes to stderr
one line per step, the whole compiler output to OUT/build.log."""

import importlib.util
import os
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from ..codegen.project import FIRMWARE_SOURCES, HOST_FIRMWARE_SOURCES, compile_flags, linker_script
from ..core.boards import get_board
from ..core.checks import check_fits
from ..core.errors import UserError
from ..core.outdir import check_output_path
from ..core.proc import run_tool
from ..core.progress import log, quiet
from ..core.resources import firmware_dir

APT_ARM = "gcc-arm-none-eabi libnewlib-arm-none-eabi"
MODEL_SOURCES = ["src/s4op_model.c", "src/s4op_weights.c"]


def toolchain(host=False):
    """Paths of the C compiler, objcopy and size (arm-none-eabi-*, or the host's gcc/size)."""
    if host:
        gcc = shutil.which("gcc") or shutil.which("cc")
        if not gcc:
            raise UserError("no host C compiler (gcc) on PATH; install it: apt-get install gcc")
        return {"gcc": gcc, "objcopy": shutil.which("objcopy"), "size": shutil.which("size")}
    tools = {}
    for key in ("gcc", "objcopy", "size"):
        path = shutil.which(f"arm-none-eabi-{key}")
        if not path:
            raise UserError(f"arm-none-eabi-{key} not found on PATH; install the Arm toolchain: "
                            f"apt-get install --no-install-recommends {APT_ARM}")
        tools[key] = path
    specs = run_tool([tools["gcc"], "-print-file-name=nano.specs"], "arm-none-eabi-gcc", check=False).stdout.strip()
    if not os.path.isabs(specs):
        raise UserError("newlib for arm-none-eabi is missing (no nano.specs); install it: "
                        "apt-get install --no-install-recommends libnewlib-arm-none-eabi")
    return tools


@dataclass
class Firmware:
    """A built firmware image and its size (arm-none-eabi-size, berkeley format)."""
    elf: Path                 # the ELF (host: the executable)
    hex: Path                 # Intel HEX (None for host)
    bin: Path                 # raw binary (None for host)
    text: int                 # code + rodata
    data: int                 # initialized data (in flash and RAM)
    bss: int                  # zeroed data + the reserved stack
    flash_bytes: int          # text + data: the whole firmware (model, harness, start-up, libc)
    ram_bytes: int            # data + bss
    board: str                # board name ("host" for host builds)
    host: bool
    unit: str = "insn"        # what the firmware's cost figures count
    icount_shift: int = None  # QEMU -icount shift the counter conversion assumes
    map: Path = None          # linker map

    def to_dict(self):
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def sizes(size_tool, *objects):
    """(text, data, bss) summed over ELF or object files; zeros without a size tool."""
    if not size_tool:
        return 0, 0, 0
    rows = run_tool([size_tool, *objects], "size").stdout.splitlines()[1:]
    return tuple(sum(int(row.split()[k]) for row in rows) for k in range(3))


def _boot2_tool():
    """firmware/s4op_boot2_image.py: the boot2 padding + CRC step the exported Makefile also runs."""
    spec = importlib.util.spec_from_file_location("s4op_boot2_image", firmware_dir() / "s4op_boot2_image.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def crc32_mpeg2(data):
    """CRC-32/MPEG-2: the RP2040 boot ROM's check of the 252 bytes of boot2."""
    return _boot2_tool().crc32_mpeg2(data)


def _boot2_source(tc, arch, out, build_log):
    """Assemble the RP2040 boot2, pad it to 252 bytes, append its CRC, emit it as a C array."""
    obj, raw = out / "boot2.o", out / "boot2.bin"
    run_tool([tc["gcc"], *arch, "-c", firmware_dir() / "s4op_boot2_rp2040.S", "-o", obj], "assembling boot2", build_log)
    run_tool([tc["objcopy"], "-O", "binary", "-j", ".text", obj, raw], "extracting boot2", build_log)
    src = out / "s4op_boot2_image.c"
    try:
        _boot2_tool().write_image(raw, src)
    except ValueError as e:
        raise UserError(str(e)) from None
    return src


def check_export_dir(project, required=("include/s4op_model.h", *MODEL_SOURCES)):
    """UserError unless `project` holds the generated C (the header and the model sources)."""
    project = Path(project)
    missing = [p for p in required if not (project / p).is_file()]
    if not missing and not any((project / "src").glob("*.c")):
        missing = ["src/*.c"]
    if missing:
        raise UserError(f"{project} is not an export directory (missing {', '.join(missing)}); "
                        "run `s4op-micro export --out DIR` first")
    return project


def compile_objects(gcc, cflags, sources, objdir, build_log, tag):
    """Compile each source to OBJDIR/NN_name.o, in parallel; returns the object paths in order."""
    objdir.mkdir(parents=True, exist_ok=True)
    objects = [objdir / f"{i:02d}_{Path(s).stem}.o" for i, s in enumerate(sources)]

    def one(pair):
        src, obj = pair
        log(tag, f"cc {Path(src).name}")
        run_tool([gcc, *cflags, "-c", src, "-o", obj], f"compiling {src}", build_log)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(one, zip(sources, objects)))
    return objects


def build(project_dir, board, host=False, out_dir=None, defines=(), extra_sources=(), opt="-O2"):
    """Compile project_dir/src/*.c (+ include/) with the board support and the benchmark main.

    ARM: ELF, HEX, BIN, map and a size report checked against the board's flash/RAM budget.
    host: a native executable (no start-up code; counter 0, unit "none")."""
    board = None if (host and board is None) else get_board(board)
    project = check_export_dir(project_dir, required=("include/s4op_model.h",)).resolve()
    sources = sorted((project / "src").glob("*.c")) + [Path(s).resolve() for s in extra_sources]
    name = "host" if host else board.name
    # absolute paths: a directory named like an option ("-1") must not reach gcc as one
    out = check_output_path(out_dir, allow_existing=True).resolve() if out_dir else project / "build" / name
    out.mkdir(parents=True, exist_ok=True)
    build_log = out / "build.log"
    build_log.write_text("")
    tc = toolchain(host)
    fw = firmware_dir()
    tag = f"build {name}"

    flags = compile_flags(board, host, defines, opt)
    unit, shift, arch = flags["unit"], flags["shift"], flags["arch"]
    cflags = [*arch, *flags["common"], f"-I{project / 'include'}", f"-I{project / 'src'}", f"-I{fw}",
              *(f"-D{d}" for d in flags["defines"])]
    fw_sources = [fw / s for s in (HOST_FIRMWARE_SOURCES if host else FIRMWARE_SOURCES)]
    if not host and board.boot2:
        fw_sources.append(_boot2_source(tc, arch, out, build_log))
    objects = compile_objects(tc["gcc"], cflags, fw_sources + sources, out / "obj", build_log, tag)

    exe = out / ("bench" if host else "firmware.elf")
    if host:
        link = [tc["gcc"], *objects, "-o", exe]
    else:
        ld = out / f"s4op_{board.name}.ld"
        ld.write_text(linker_script(board))
        link = [tc["gcc"], *arch, *objects, "-o", exe, *flags["link"], f"-Wl,-Map={out / 'firmware.map'}",
                f"-L{fw}", f"-T{ld}"]
    log(tag, f"link {exe.name}")
    res = run_tool(link, "linking", build_log, check=False)
    if res.returncode:
        m = re.search(r"region `(\w+)' overflowed by (\d+) bytes", res.stderr)
        if m and board is not None:
            region = {"FLASH": (board.flash_origin, board.flash_size), "RAM": (board.ram_origin, board.ram_size)}[m.group(1)]
            raise UserError(f"the firmware does not fit {board.name}: its {m.group(1)} region "
                            f"({region[1]} B at {region[0]:#x}) overflows by {m.group(2)} B; "
                            "prune or shrink the model, or pick a bigger board")
        run_tool(link, "linking", build_log)   # raises with the first error line

    hex_path = bin_path = None
    if not host:
        hex_path, bin_path = out / "firmware.hex", out / "firmware.bin"
        for fmt, path in (("ihex", hex_path), ("binary", bin_path)):
            log(tag, f"objcopy {path.name}")
            run_tool([tc["objcopy"], "-O", fmt, exe, path], f"objcopy -O {fmt}", build_log)
    log(tag, "size")
    text, data, bss = sizes(tc["size"], exe)
    res = Firmware(elf=exe, hex=hex_path, bin=bin_path, text=text, data=data, bss=bss,
                   flash_bytes=text + data, ram_bytes=data + bss, board=name, host=host,
                   unit=unit, icount_shift=shift, map=None if host else out / "firmware.map")
    if not host:
        check_fits(board, res.flash_bytes, res.ram_bytes, "the firmware",
                   f"whole image: text {text} + data {data} B flash, data {data} + bss {bss} B RAM "
                   f"incl. {board.stack_bytes} B stack")
    return res


def model_sizes(export_dir, board):
    """Flash and RAM of the model alone (s4op_model.c + s4op_weights.c compiled -Os for the board's
    core, no harness), or None when arm-none-eabi-gcc is not installed."""
    gcc, size_tool = shutil.which("arm-none-eabi-gcc"), shutil.which("arm-none-eabi-size")
    if not gcc or not size_tool:
        return None
    export_dir = Path(export_dir)
    cflags = [f"-mcpu={board.cpu}", *board.arch_flags, "-Os", "-std=c99", "-ffunction-sections", "-fdata-sections",
              "-DS4OP_NO_FLOAT", f"-I{export_dir / 'include'}"]
    with tempfile.TemporaryDirectory() as tmp, quiet():
        objects = compile_objects(gcc, cflags, [export_dir / s for s in MODEL_SOURCES], Path(tmp), None,
                                  "size")
        text, data, bss = sizes(size_tool, *objects)
    return {"flash_bytes": text + data, "ram_bytes": data + bss, "text": text, "data": data, "bss": bss,
            "compiler": f"arm-none-eabi-gcc -mcpu={board.cpu} -Os"}

