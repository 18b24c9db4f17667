#!/usr/bin/env bash
# Set up everything s4op-micro needs on a Debian machine (run as root), idempotently:
# the Cortex-M toolchain and QEMU from Debian, a virtualenv at .venv with the package and its
# test/TFLM/board/Ray/peers extras. Re-running it is fast: installed things are not reinstalled.
set -euo pipefail
cd "$(dirname "$0")/.."

# llvm-19: llvm-mca with the cortex-m7/cortex-m55 scheduling models (s4op_micro.measure.cycles)
apt_packages="gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm gcc g++ make cmake valgrind llvm-19"
missing=""
for p in $apt_packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "setup: installing Debian packages:$missing" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends: leaves out libstdc++-arm-none-eabi-newlib (1.5 GB; no C++ is built).
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# pip's output goes to a log; on failure it is shown (less this machine's "Location ... is ignored" lines)
pip_install() {
  local log
  log=$(mktemp)
  if ! .venv/bin/pip install -q "$@" >"$log" 2>&1; then
    grep -v "is ignored: it is neither a file nor a directory" "$log" >&2
    echo "setup: pip install $* failed" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
}

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating the virtualenv .venv" >&2
  python3 -m venv .venv
fi
stamp=.venv/.s4op-setup-stamp
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing Python packages into .venv (torch==2.13.0 CPU, tensorflow-cpu, tflite-micro, ...;" \
       "about 2 minutes on a fresh machine)" >&2
  pip_install --upgrade pip
  pip_install -e ".[all,test]"
  touch "$stamp"
fi
echo "setup: ready (.venv/bin/s4op-micro)" >&2
