#!/usr/bin/env bash
# Create (or reuse) the Python environment for multirater_monai and install the package.
#
# - Inside an active virtualenv/conda env, that env is used as it is (a CUDA torch there is kept).
# - Otherwise a .venv is created next to this repository, with the system site-packages
#   visible, so a torch that the system Python already has (CPU or CUDA) is kept too.
# - torch is installed only when no torch>=2.8 imports: then `pip install torch==2.13.0`,
#   which on our CPU machines takes the local CPU wheel instead of a multi-GB CUDA build.
# Prints the python to use as its last line.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

if [[ -n "${VIRTUAL_ENV:-}" ]]; then
    py="$VIRTUAL_ENV/bin/python"
elif [[ -n "${CONDA_PREFIX:-}" ]]; then
    py="$CONDA_PREFIX/bin/python"
else
    if [[ ! -x .venv/bin/python ]]; then
        echo "[setup] creating .venv" >&2
        python3 -m venv --system-site-packages .venv
    fi
    py="$repo/.venv/bin/python"
fi

pip_install() { "$py" -m pip install --disable-pip-version-check -q "$@" 2>&1 | grep -v "^WARNING: Location" >&2 || true; }

if "$py" - <<'PY' 2>/dev/null
import sys, torch
major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
sys.exit(0 if (major, minor) >= (2, 8) else 1)
PY
then
    echo "[setup] keeping installed torch $("$py" -c 'import torch; print(torch.__version__)')" >&2
else
    echo "[setup] installing torch==2.13.0" >&2
    pip_install "torch==2.13.0"
fi

echo "[setup] installing multirater_monai (editable) with test extras" >&2
pip_install -e "$repo[test]"
"$py" -c "import torch, monai, multirater_monai" || { echo "[setup] FAILED: the package does not import; see pip output above" >&2; exit 1; }
echo "$py"
