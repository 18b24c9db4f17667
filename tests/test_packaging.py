"""A plain (non-editable) install must carry templates/ and firmware/ and give a working CLI."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_non_editable_install_ships_templates_and_firmware(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(ROOT)], check=True, cwd=tmp_path)
    pkg = target / "s4op_micro"
    assert (pkg / "_templates").is_dir() and any((pkg / "_templates").rglob("*.j2"))
    assert (pkg / "_firmware").is_dir() and any((pkg / "_firmware").rglob("*.c"))
    env = dict(os.environ, PYTHONPATH=str(target))
    code = ("import s4op_micro.core.resources as r, s4op_micro; "
            "print(s4op_micro.__file__); print(r.templates_dir()); print(r.firmware_dir())")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    file_, templates, firmware = out.stdout.split()
    assert file_.startswith(str(target)) and templates.startswith(str(target)) and firmware.startswith(str(target))
    help_ = subprocess.run([sys.executable, "-m", "s4op_micro", "--help"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, check=True)
    assert "train" in help_.stdout
