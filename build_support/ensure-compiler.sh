#!/usr/bin/env bash
# `bash build_support/ensure-compiler.sh PYTHON`: make sure PYTHON can build the compiled hot path
# (TRACE_PROXY_MYPYC=1, see setup.py), which needs a C compiler and PYTHON's headers. When they are missing and this
# is root on Debian, installs gcc / python3-dev (the headers of Debian's own python3); otherwise, or if the headers
# are still missing after that, says what is missing and exits 1. Used by .ci/run and bench/run.sh.
set -euo pipefail

python=$1
has_headers() {
    [ "$("${python}" -c 'import os, sysconfig; print(os.path.isfile(sysconfig.get_paths()["include"] + "/Python.h"))')" = True ]
}

need=()
command -v cc >/dev/null 2>&1 || need+=(gcc)
has_headers || need+=(python3-dev)
if [ "${#need[@]}" -eq 0 ]; then
    echo "C compiler and headers of ${python} present"
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "compiling the hot path for ${python} needs ${need[*]}: install them, or build without TRACE_PROXY_MYPYC=1" >&2
    exit 1
fi
echo "installing ${need[*]} from Debian (to compile the hot path)"
DEBIAN_FRONTEND=noninteractive apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
has_headers || {
    echo "the headers of ${python} are still missing (python3-dev serves Debian's own python3 only)" >&2
    exit 1
}
