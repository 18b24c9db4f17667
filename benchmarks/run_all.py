"""Run every benchmark in sequence, then collect every results table into benchmarks/results/README.md.

    .venv/bin/python benchmarks/run_all.py [--quick] [--only NAME,...] [--only-collect]

A failing benchmark does not stop the others; the exit status is non-zero if any failed.
--quick passes each benchmark's reduced budget where it has one (select, prune, quant, latency,
scaling, peers, step, export: --quick; train and tflm have none and run in full).
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# name -> (script, extra arguments with --quick)
BENCHMARKS = {
    "train": ("bench_train.py", []),
    "select": ("bench_select.py", ["--quick"]),
    "prune": ("bench_prune.py", ["--quick"]),
    "quant": ("bench_quant.py", ["--quick"]),
    "tflm": ("bench_tflm.py", []),
    "latency": ("bench_latency.py", ["--quick"]),
    "scaling": ("bench_scaling.py", ["--quick"]),
    "peers": ("bench_peers.py", ["--quick"]),
    "step": ("bench_step.py", ["--quick"]),
    "export": ("bench_export.py", ["--quick"]),
}


def collect():
    """Concatenate every results/*.md (but README.md) into results/README.md."""
    parts = sorted(p for p in RESULTS.glob("*.md") if p.name != "README.md")
    head = ["# Benchmark results", "",
            f"Collected {time.strftime('%Y-%m-%d %H:%M')} by `benchmarks/run_all.py` from "
            + ", ".join(f"`{p.name}`" for p in parts) + ".", ""]
    body = []
    for p in parts:
        text = p.read_text().strip()
        body += [f"<!-- {p.name} -->", text if text.startswith("#") else f"## {p.stem}\n\n{text}", ""]
    (RESULTS / "README.md").write_text("\n".join(head + body))
    print(f"collected {len(parts)} tables -> {RESULTS / 'README.md'}", file=sys.stderr)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="reduced budgets where a benchmark has one")
    ap.add_argument("--only", help=f"comma list of benchmarks to run (of {','.join(BENCHMARKS)})")
    ap.add_argument("--only-collect", action="store_true", help="run nothing; only rebuild results/README.md")
    a = ap.parse_args(argv)
    names = a.only.split(",") if a.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmarks {unknown}; choose from {', '.join(BENCHMARKS)}")
    failed, times = [], {}
    if not a.only_collect:
        for name in names:
            script, quick = BENCHMARKS[name]
            cmd = [sys.executable, str(HERE / script), *(quick if a.quick else [])]
            print(f"=== {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
            start = time.time()
            try:
                code = subprocess.call(cmd, cwd=HERE.parent)
            except OSError as e:
                print(f"=== {name}: could not start ({e})", file=sys.stderr)
                code = -1
            times[name] = time.time() - start
            if code:
                failed.append(name)
            print(f"=== {name}: {'FAILED (exit ' + str(code) + ')' if code else 'ok'} in {times[name]:.0f} s",
                  file=sys.stderr, flush=True)
    collect()
    if times:
        print("summary: " + ", ".join(f"{n} {'FAILED' if n in failed else 'ok'} ({t:.0f} s)" for n, t in times.items()),
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
