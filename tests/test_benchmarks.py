"""The benchmark scripts are not run by the tests (they take minutes to an hour), but each must at
least import and parse its arguments: a stale import once broke bench_scaling unnoticed."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("bench_*.py")) + ["run_all.py"]


def test_every_benchmark_is_listed_in_run_all():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import run_all
    finally:
        sys.path.remove(str(BENCHMARKS))
    listed = {script for script, _ in run_all.BENCHMARKS.values()}
    assert listed == {s for s in SCRIPTS if s.startswith("bench_")}


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_imports_and_has_help(script):
    out = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True,
                         cwd=BENCHMARKS.parent, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage" in out.stdout
