"""Building the exported TFLM app (DIR/tflm/) with CMake against a TensorFlow Lite Micro tree."""

import os
import shutil
from pathlib import Path

from ..core.errors import UserError
from ..core.proc import run_tool


def build_app(export_dir, build_dir, tflm_root=None, jobs=2):
    """Configure and build DIR/tflm with CMake against a TFLM tree (TFLM_ROOT); returns the app's path."""
    root = tflm_root or os.environ.get("TFLM_ROOT")
    if not root or not (Path(root) / "tensorflow/lite/micro/micro_interpreter.h").is_file():
        raise UserError(f"TFLM_ROOT={root or '(unset)'} is not a TensorFlow Lite Micro tree; set TFLM_ROOT to the output "
                        "of tflite-micro's create_tflm_tree.py (see DIR/tflm/CMakeLists.txt)")
    src = Path(export_dir) / "tflm"
    if not (src / "CMakeLists.txt").is_file():
        raise UserError(f"{src} has no CMakeLists.txt; export with --formats c,tflm")
    cmake = shutil.which("cmake")
    if not cmake:
        raise UserError("cmake is not installed (apt-get install cmake)")
    run_tool([cmake, "-S", src, "-B", build_dir, f"-DTFLM_ROOT={root}"], "configuring the TFLM app (cmake)")
    run_tool([cmake, "--build", build_dir, "-j", str(jobs)], "building the TFLM app")
    return Path(build_dir) / "s4op_tflm"
