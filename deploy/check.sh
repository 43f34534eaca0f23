#!/usr/bin/env bash
# Validates and scans the deployment files: `bash deploy/check.sh` from anywhere in the checkout (CI runs it from
# .ci/run). Exits non-zero when any manifest or the Dockerfile fails.
#
# 1. kubernetes-validate --strict against Kubernetes K8S_VERSION (below: the newest version the installed
#    kubernetes-validate ships schemas for): every manifest under deploy/kubernetes/ but the two that are not
#    Kubernetes API objects with a built-in schema (NO_SCHEMA below). Strict: an unknown field is an error.
#    kubernetes-validate only *warns* (and exits 0) when it has no schema for a kind/apiVersion, which would let a
#    mistyped apiVersion through: any WARN line fails this script too.
# 2. checkov --framework kubernetes on deploy/kubernetes/ (the PodMonitor and the kustomization included), and
#    checkov --framework dockerfile on the Dockerfile. Every check left failing is skipped next to its resource with
#    the reason (checkov.io/skipN annotations, `# checkov:skip=` comments); any other failure fails the script.
#
# The tools live in their own venv, .venv-deploy (checkov pins many dependencies; they stay out of the project's
# test venv), created and filled on the first run: about 70 s of pip on a 2-CPU machine, and about 400 MB; later
# runs spend 5 s on pip finding everything installed. The checks take about 15 s, nearly all of it checkov.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

K8S_VERSION=1.37.0
VENV=.venv-deploy
REQUIREMENTS=("kubernetes-validate>=1.37,<1.38" "checkov>=3.3.30,<3.4")
MANIFESTS=deploy/kubernetes
# Not validated by kubernetes-validate, which has no schema for them:
# - kustomization.yaml is kustomize's build file, not an object sent to the API server;
# - monitoring/podmonitor.yaml is a custom resource of the Prometheus Operator (monitoring.coreos.com/v1), whose
#   CRD schema kubernetes-validate does not ship. checkov still scans it, and tests/deploy checks that its
#   selector, port, path and namespace match the Deployment it scrapes.
NO_SCHEMA=("${MANIFESTS}/kustomization.yaml" "${MANIFESTS}/monitoring/podmonitor.yaml")

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

install_tools() {
    local start=$SECONDS
    if [ ! -x "${VENV}/bin/python" ]; then
        python3 -m venv "${VENV}"
    fi
    # pip is quick when the requirements are already met, so this runs every time and picks up a changed pin.
    "${VENV}/bin/pip" install -q "${REQUIREMENTS[@]}"
    echo "deploy/check.sh: tools ready in $((SECONDS - start))s: kubernetes-validate $("${VENV}/bin/kubernetes-validate" --version), checkov $("${VENV}/bin/checkov" --version)"
}

validate_manifests() {
    local start=$SECONDS files=() file skip output rc=0
    while IFS= read -r -d '' file; do
        skip=0
        for excluded in "${NO_SCHEMA[@]}"; do
            [ "${file}" = "${excluded}" ] && skip=1
        done
        [ "${skip}" -eq 0 ] && files+=("${file}")
    done < <(find "${MANIFESTS}" -name '*.yaml' -print0 | sort -z)
    if [ "${#files[@]}" -eq 0 ]; then
        echo "deploy/check.sh: no manifests found under ${MANIFESTS}" >&2
        return 1
    fi
    output=$("${VENV}/bin/kubernetes-validate" --strict -k "${K8S_VERSION}" "${files[@]}") || rc=$?
    echo "${output}"
    if [ "${rc}" -ne 0 ] || grep -q -E '^(WARN|ERROR)' <<<"${output}"; then
        echo "deploy/check.sh: kubernetes-validate --strict -k ${K8S_VERSION} failed (see the WARN/ERROR lines above)" >&2
        return 1
    fi
    echo "deploy/check.sh: ${#files[@]} manifests valid for Kubernetes ${K8S_VERSION} in $((SECONDS - start))s"
}

scan() {
    local start=$SECONDS
    # --skip-download: no policies, guidelines or severities fetched from the vendor's platform (and no network).
    "${VENV}/bin/checkov" --framework kubernetes -d "${MANIFESTS}" --compact --quiet --skip-download
    "${VENV}/bin/checkov" --framework dockerfile -f Dockerfile --compact --quiet --skip-download
    echo "deploy/check.sh: checkov passed in $((SECONDS - start))s"
}

install_tools
validate_manifests
scan
