#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine: system packages and the project venv.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(docker.io docker-registry buildah skopeo podman debootstrap postgresql apache2-utils
              qemu-user-static)
missing=()
for package in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
    echo "setup: installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
    # uv installs the project (a dependency of it anyway): a fourth of pip's time. It compiles
    # the bytecode at install, as pip does: where PYTHONDONTWRITEBYTECODE is set, every test's
    # Python would otherwise compile MLflow again (5 s of each `import mlflow`).
    .venv/bin/pip install -q "uv>=0.5" 2>&1 | grep -v -i "ignoring\|ignored" || true
    .venv/bin/uv pip install -q --compile-bytecode --python .venv/bin/python \
        --upgrade-package pip pip -e '.[dev]'
    .venv/bin/python -c "import mlflow_steps, mlflow, conda_lock, pytest" 
    rm -f .venv/.installed-* && touch "$stamp"
fi

# The oldest MLflow the runtime step supports (mlflow_compat.SUPPORTED): its contract and
# runtime tests run there too (`make test`), the newest comes with .venv.
OLDEST=.venv-mlflow-oldest
OLDEST_PINS=("mlflow==3.0.1" "sqlalchemy<2.1")
oldest_stamp=$OLDEST/.installed-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ ! -f "$oldest_stamp" ]; then
    rm -rf "$OLDEST"
    .venv/bin/uv venv -q --python "$(.venv/bin/python -c 'import sys; print(sys.executable)')" "$OLDEST"
    .venv/bin/uv pip install -q --compile-bytecode --python "$OLDEST/bin/python" -e . \
        "${OLDEST_PINS[@]}" \
        pytest hypothesis "moto[server]" boto3
    "$OLDEST/bin/python" -c "import mlflow; assert mlflow.__version__ == '3.0.1'"
    touch "$oldest_stamp"
fi
