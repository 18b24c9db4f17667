#!/usr/bin/env bash
# Set up everything s4op-micro needs on a Debian machine (run as root), idempotently:
# the Cortex-M toolchain and QEMU from Debian, a virtualenv at .venv with the package and its
# test/TFLM/board/Ray/peers extras. Re-running it is fast: installed things are not reinstalled.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages="gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm gcc g++ make cmake valgrind"
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

[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=.venv/.s4op-setup-stamp
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing Python packages into .venv (torch==2.13.0 CPU, tensorflow-cpu, tflite-micro, ...)" >&2
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".[all,test]"
  touch "$stamp"
fi
echo "setup: ready (.venv/bin/s4op-micro)" >&2
