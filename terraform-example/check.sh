#!/usr/bin/env bash
# Offline checks of terraform-example/, run by CI:
#   1. terraform fmt -check -recursive (no provider is downloaded, so no
#      `terraform validate`; tests/test_terraform_example.py parses the HCL),
#   2. checkov over the folder (Terraform, Kubernetes manifests, secrets) and
#      over the Kubernetes manifests with the kubernetes framework: any failed
#      check fails this script. Skips are inline, each with its reason.
# checkov pins many dependencies that conflict with Airflow's, so it lives in a
# venv of its own (CHECKOV_VENV), created on first use.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
checkov_venv="${CHECKOV_VENV:-/tmp/checkov-venv}"
# Pinned: a new checkov release adds checks, which must not fail CI unannounced.
checkov_version="${CHECKOV_VERSION:-3.3.30}"
python="${PYTHON:-python3}"

echo "== terraform fmt -check -recursive"
terraform fmt -check -recursive -diff "$here"

if ! "$checkov_venv/bin/checkov" --version 2>/dev/null | grep -qx "$checkov_version"; then
  echo "== installing checkov $checkov_version into $checkov_venv"
  "$python" -m venv "$checkov_venv"
  "$checkov_venv/bin/pip" install --quiet --disable-pip-version-check "checkov==$checkov_version"
fi
checkov="$checkov_venv/bin/checkov"

# Offline: no download of external modules, policy metadata or guidelines.
common=(--quiet --compact --skip-download --download-external-modules false)

echo "== checkov -d terraform-example"
"$checkov" -d "$here" "${common[@]}"

echo "== checkov -d terraform-example/kubernetes --framework kubernetes"
"$checkov" -d "$here/kubernetes" --framework kubernetes "${common[@]}"

echo "terraform-example: fmt and checkov passed"
