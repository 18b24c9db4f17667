"""Host build and run of an exported DIR: compile the generated C with the host gcc (scalar path,
-std=c99 -Wall -Wextra -Werror -pedantic, -DS4OP_DEBUG) plus a small driver that streams int8
sequences through stdin and writes the int8 scores to stdout."""

import shutil
import subprocess
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..resources import templates_dir

STRICT = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic"]


def compile_host(export_dir, build_dir, debug=True, extra=()):
    """Build the host driver against DIR's sources; returns the executable's path."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise UserError("no host C compiler (gcc) found; install gcc (apt-get install gcc)")
    export_dir, build_dir = Path(export_dir), Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    missing = [p for p in ("src/s4op_model.c", "src/s4op_weights.c", "include/s4op_model.h") if not (export_dir / p).is_file()]
    if missing:
        raise UserError(f"{export_dir} is not an export directory (missing {', '.join(missing)}); run `s4op-micro export`")
    exe = build_dir / "s4op_host"
    cmd = [cc, *STRICT, *(["-DS4OP_DEBUG"] if debug else []), *extra, "-I", str(export_dir / "include"),
           str(export_dir / "src" / "s4op_model.c"), str(export_dir / "src" / "s4op_weights.c"),
           str(templates_dir() / "host" / "s4op_host_main.c"), "-o", str(exe)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        first = (res.stderr.strip().splitlines() or ["?"])[0]
        raise UserError(f"host gcc failed on the generated C: {first}")
    return exe


def run_host(exe, x, n_classes, every_step=False):
    """Run the driver on int8 x (n, L, C): scores int8 (n, classes) or (n, L, classes), and the debug
    counters {"sat_state", "sat_act"} (when built with S4OP_DEBUG)."""
    x = np.ascontiguousarray(x, dtype=np.int8)
    n, L = x.shape[0], x.shape[1]
    payload = np.array([n, L, int(every_step)], dtype="<i4").tobytes() + x.tobytes()
    res = subprocess.run([str(exe)], input=payload, capture_output=True)
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
