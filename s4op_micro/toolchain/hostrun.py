"""The host run of an exported DIR: the generated C compiled with the host gcc (the scalar path,
the same strict flags as every build, -DS4OP_DEBUG for the saturation counters) with a small
driver (firmware/s4op_host_main.c) that streams int8 sequences from stdin and writes the int8
scores to stdout. Fast enough to check whole test sets bit for bit against the integer reference."""

from pathlib import Path

import numpy as np

from ..codegen.project import STRICT_CFLAGS
from ..core.errors import UserError
from ..core.proc import run_tool
from ..core.resources import firmware_dir
from .build import MODEL_SOURCES, check_export_dir, toolchain


def compile_host(export_dir, build_dir, debug=True, extra=()):
    """Build the host driver against DIR's sources; returns the executable's path."""
    export_dir, build_dir = check_export_dir(export_dir), Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    exe = build_dir / "s4op_host"
    cmd = [toolchain(host=True)["gcc"], "-O2", *STRICT_CFLAGS, *(["-DS4OP_DEBUG"] if debug else []), *extra,
           f"-I{export_dir / 'include'}", *(export_dir / s for s in MODEL_SOURCES),
           firmware_dir() / "s4op_host_main.c", "-o", exe]
    run_tool(cmd, "host gcc on the generated C")
    return exe


def run_host(exe, x, n_classes, every_step=False):
    """Run the driver on int8 x (n, L, C): scores int8 (n, classes) or (n, L, classes), and the debug
    counters {"sat_state", "sat_act"} (when built with S4OP_DEBUG)."""
    x = np.ascontiguousarray(x, dtype=np.int8)
    n, L = x.shape[0], x.shape[1]
    payload = np.array([n, L, int(every_step)], dtype="<i4").tobytes() + x.tobytes()
    res = run_tool([exe], "the host build of the model", input=payload, text=False, check=False)
    if res.returncode:
        raise UserError(f"the host build of the model failed with exit code {res.returncode}: "
                        f"{res.stderr.decode(errors='replace').strip()[:200]}")
    s = np.frombuffer(res.stdout, dtype=np.int8)
    shape = (n, L, n_classes) if every_step else (n, n_classes)
    if s.size != int(np.prod(shape)):
        raise UserError(f"the host build wrote {s.size} scores, expected {int(np.prod(shape))}")
    counters = {}
    for tok in res.stderr.decode(errors="replace").split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            counters[k] = int(v)
    return s.reshape(shape), counters
