#!/usr/bin/env bash
# Side-by-side benchmark of trace-proxy: `bash bench/run.sh [--quick] [bench.py options]` from a clean checkout.
#
# Installs what the benchmark needs when it is missing (wrk, nginx-light, squid, tinyproxy, curl from Debian, which
# needs root; the packages' own services are not started), creates bench/.venv on the system's Python >= 3.11 (or
# TRACE_PROXY_PYTHON) and installs trace-proxy into it (`pip install .`, hot path compiled), then hands over to
# bench/bench.py with that venv's Python. `--quick` is CI's smoke run (about a minute); without it the full run
# (5 rounds) takes about 17 minutes.
# `--baseline REF` (a git commit-ish) also installs REF's trace-proxy, built the same way, into bench/.venv-baseline
# and measures it beside this checkout's in every round (an A/B of a hot-path change; with `--only-trace-proxy`,
# which bench.py takes, the other proxies are left out and a run takes a few minutes).
# Results: a table on stdout and bench/results/latest.json.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# `--baseline REF` is this script's; every other argument goes to bench.py unchanged.
baseline_ref=""
args=()
while [ "$#" -gt 0 ]; do
    case "$1" in
        --baseline)
            [ "$#" -ge 2 ] || { echo "bench: --baseline needs a git commit-ish" >&2; exit 2; }
            baseline_ref=$2
            shift 2
            ;;
        --baseline=*)
            baseline_ref=${1#--baseline=}
            shift
            ;;
        *)
            args+=("$1")
            shift
            ;;
    esac
done
baseline_commit=""
if [ -n "${baseline_ref}" ]; then
    command -v git >/dev/null 2>&1 || { echo "bench: --baseline needs git" >&2; exit 1; }
    baseline_commit=$(git rev-parse --verify --quiet "${baseline_ref}^{commit}") || {
        echo "bench: --baseline ${baseline_ref}: not a commit of this repository" >&2
        exit 2
    }
fi

export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
export PATH="${PATH}:/usr/local/sbin:/usr/sbin:/sbin"  # nginx, squid live in sbin

# Debian package -> the command it provides.
declare -A COMMANDS=([wrk]=wrk [nginx-light]=nginx [squid]=squid [tinyproxy]=tinyproxy [curl]=curl)
missing=()
for package in wrk nginx-light squid tinyproxy curl; do
    command -v "${COMMANDS[${package}]}" >/dev/null 2>&1 || missing+=("${package}")
done
for command in taskset getconf python3; do
    command -v "${command}" >/dev/null 2>&1 || { echo "bench: ${command} is missing" >&2; exit 1; }
done

if [ "${#missing[@]}" -gt 0 ]; then
    echo "bench: installing ${missing[*]} from Debian"
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "bench: ${missing[*]} missing and this is not root on Debian: install them, then re-run" >&2
        exit 1
    fi
    # Keep the packages' services (squid on :3128, tinyproxy on :8888, nginx on :80) from starting on install,
    # unless a policy is already in place (as in Debian's container images).
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [ ! -e "${policy}" ]; then
        printf '#!/bin/sh\nexit 101\n' >"${policy}" && chmod 755 "${policy}" && own_policy=1
        trap '[ "${own_policy}" -eq 1 ] && rm -f "${policy}"' EXIT
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
    if [ "${own_policy}" -eq 1 ]; then
        rm -f "${policy}"
        own_policy=0
    fi
fi

# The interpreter trace-proxy runs on decides much of its cost per request. Deployments run an optimised CPython
# (the python:*-slim image and the distributions' packages are built with PGO and LTO; a pyenv build by default is
# not: the same requests cost this proxy ~15-25 % more CPU there), so the benchmark runs trace-proxy on the system's
# Python when it is >= 3.11, else on python3 from PATH; TRACE_PROXY_PYTHON names another. Its own venv,
# bench/.venv, is (re)made for the interpreter chosen.
usable='import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))'
python=""
for candidate in ${TRACE_PROXY_PYTHON:-/usr/bin/python3 python3}; do
    path=$(command -v "${candidate}" 2>/dev/null) || continue
    if "${path}" -c "${usable}" >/dev/null 2>&1; then
        python=$(readlink -f "${path}")
        break
    fi
done
if [ -z "${python}" ]; then
    echo "bench: no Python >= 3.11 with venv among: ${TRACE_PROXY_PYTHON:-/usr/bin/python3 python3}" >&2
    exit 1
fi
echo "bench: trace-proxy runs on ${python} ($("${python}" -V 2>&1))"
# The hot-path modules are compiled with mypyc (TRACE_PROXY_MYPYC=1, as the Docker image builds them; see setup.py):
# that needs a C compiler and the interpreter's headers. TRACE_PROXY_MYPYC=0 benchmarks the interpreted modules.
mypyc=${TRACE_PROXY_MYPYC:-1}
if [ "${mypyc}" = 1 ]; then
    bash build_support/ensure-compiler.sh "${python}"
fi
venv_dir=bench/.venv
if [ ! -x "${venv_dir}/bin/python" ] || [ "$(readlink -f "${venv_dir}/bin/python")" != "${python}" ]; then
    rm -rf "${venv_dir}"
    "${python}" -m venv "${venv_dir}"
fi
# A regular (not editable) install, so that compiled modules live in the venv, never beside the sources; it is
# redone whenever the sources or the build mode changed since the last one.
stamp="${mypyc} $(cat pyproject.toml setup.py build_support/* $(find proxy -name '*.py' | sort) | sha256sum | cut -c1-16)"
if [ "$(cat "${venv_dir}/.installed" 2>/dev/null)" != "${stamp}" ] || [ ! -x "${venv_dir}/bin/trace-proxy" ]; then
    echo "bench: pip install . into ${venv_dir} (TRACE_PROXY_MYPYC=${mypyc})"
    rm -f "${venv_dir}/.installed"
    TRACE_PROXY_MYPYC=${mypyc} "${venv_dir}/bin/pip" install -q .
    echo "${stamp}" >"${venv_dir}/.installed"
fi

# The baseline: REF's tree, exported with `git archive` into a temporary directory (outside the checkout, so never
# committed, and no worktree to prune if this is killed), installed like the checkout above into its own venv on the
# same interpreter, and deleted again before the measurement starts (a regular install does not need its sources).
# The venv is reinstalled only when REF resolves to another commit or the build mode changed.
baseline_args=()
if [ -n "${baseline_commit}" ]; then
    base_venv=bench/.venv-baseline
    short=$(git rev-parse --short "${baseline_commit}")
    if [ ! -x "${base_venv}/bin/python" ] || [ "$(readlink -f "${base_venv}/bin/python")" != "${python}" ]; then
        rm -rf "${base_venv}"
        "${python}" -m venv "${base_venv}"
    fi
    base_stamp="${mypyc} ${baseline_commit}"
    if [ "$(cat "${base_venv}/.installed" 2>/dev/null)" != "${base_stamp}" ] \
        || [ ! -x "${base_venv}/bin/trace-proxy" ]; then
        echo "bench: pip install ${baseline_ref} (${short}) into ${base_venv} (TRACE_PROXY_MYPYC=${mypyc})"
        rm -f "${base_venv}/.installed"
        base_src=$(mktemp -d "${TMPDIR:-/tmp}/trace-proxy-baseline-${short}.XXXXXX")
        trap 'rm -rf "${base_src}"' EXIT  # also when the build fails (exec, below, runs no trap)
        git archive --format=tar "${baseline_commit}" | tar -x -C "${base_src}"
        TRACE_PROXY_MYPYC=${mypyc} "${base_venv}/bin/pip" install -q "${base_src}"
        rm -rf "${base_src}"
        trap - EXIT
        echo "${base_stamp}" >"${base_venv}/.installed"
    fi
    echo "bench: baseline ${baseline_ref} = ${baseline_commit} in ${base_venv}"
    baseline_args=(--baseline-trace-proxy "${base_venv}/bin/trace-proxy" --baseline-commit "${baseline_commit}"
        --baseline-ref "${baseline_ref}")
fi

# 1,000 idle client connections need more than the usual 1,024 descriptors (client, proxy and origin sides).
hard=$(ulimit -Hn)
if [ "${hard}" = unlimited ] || [ "${hard}" -gt 65536 ]; then
    ulimit -n 65536
else
    ulimit -n "${hard}"
fi

exec "${venv_dir}/bin/python" bench/bench.py ${args[@]+"${args[@]}"} ${baseline_args[@]+"${baseline_args[@]}"}
