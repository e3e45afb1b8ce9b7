#!/usr/bin/env bash
# Create (or reuse) .venv-monailabel: MONAI Label 0.8.5 beside multirater_monai, keeping a CPU torch.
#
# Why a separate environment: monailabel's own requirements pull a CUDA torch, torchvision and an old
# numpy, and the server starts only with pydicom 2.4.x, while the project's DICOM-SEG writer
# (highdicom) needs pydicom 3. So monailabel is installed with --no-deps into its own venv, followed
# by exactly what its server imports, with the big pieces swapped for small ones (itk-core + itk-io
# instead of itk; no torchvision: the app's transforms do not use monailabel.transform.post).
# The system site-packages stay visible (numpy, scipy, pydantic come from there when present).
#
#   bash scripts/setup_monailabel.sh            # prints the environment's python as its last line
#   MONAILABEL_VENV=/some/dir bash scripts/setup_monailabel.sh
#
# Then: .venv-monailabel/bin/monailabel start_server --app monailabel_app --studies <folder of images>
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MONAILABEL_VENV:-$repo/.venv-monailabel}"
base_python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "[setup_monailabel] creating $venv" >&2
    "$base_python" -m venv --system-site-packages "$venv"
fi
py="$venv/bin/python"
pip_install() { "$py" -m pip install --disable-pip-version-check -q "$@" 2>&1 | grep -v "^WARNING: Location" >&2 || true; }

if "$py" -c "import monailabel.app, multirater_monai, torch" 2>/dev/null \
        && "$py" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13') else 1)"; then
    echo "[setup_monailabel] $venv is ready" >&2
    echo "$py"
    exit 0
fi

echo "[setup_monailabel] installing torch 2.13 (CPU) and MONAI 1.6.1" >&2
# torch==2.13.0 resolves to the local CPU wheel on our machines; elsewhere pass a CPU index with PIP_INDEX_URL
pip_install "torch==2.13.0"
pip_install "monai==1.6.1" "pytorch-ignite>=0.5" "nibabel>=5" "SimpleITK>=2.3" "scipy>=1.10" "tqdm>=4.60" \
    "tensorboard>=2.12" "matplotlib>=3.7" "fire>=0.5" "pyyaml>=6" "jsonschema>=4" "numpy>=1.24,<3"

echo "[setup_monailabel] installing monailabel 0.8.5 without its dependencies, then what its server imports" >&2
pip_install --no-deps "monailabel==0.8.5"
pip_install "pydicom==2.4.4" "dicomweb-client==0.59.3" "pydicom-seg==0.4.1" "pynetdicom>=2.0.2,<3" \
    "fastapi>=0.110.2" "uvicorn>=0.29.0" "pydantic>=2.7" "pydantic-settings>=2.2.1" "python-multipart>=0.0.9" \
    "python-dotenv>=1.0.1" "httpx>=0.27.0" "schedule>=1.2.1" "timeloop>=1.0.2" "expiringdict>=1.2.2" \
    "expiring_dict>=1.1.0" "cachetools>=5.3.3" "watchdog>=4.0.0" "pynrrd>=1.0.0" "filelock>=3.11.0" \
    "passlib>=1.7.4" "pyjwt>=2.8.0" "bcrypt>=4.1.2" "requests>=2.31.0" "requests-toolbelt>=1.0.0" \
    "einops>=0.7.0" "itk-core>=5.4" "itk-io>=5.4" "psutil" "pillow" "google-auth>=2.29.0" "girder-client>=3.2.3"
# highdicom 0.28 needs pydicom 3, which this server refuses; the package installs without its dependencies
echo "[setup_monailabel] installing multirater_monai (editable, dependencies as above)" >&2
pip_install --no-deps -e "$repo"

"$py" - <<'PY' || { echo "[setup_monailabel] FAILED: see the import error above" >&2; exit 1; }
import torch, numpy, monai, pydicom, monailabel.app, multirater_monai
assert torch.__version__.startswith("2.13"), torch.__version__
assert pydicom.__version__.startswith("2.4"), pydicom.__version__
print(f"[setup_monailabel] torch {torch.__version__}, numpy {numpy.__version__}, monai {monai.__version__}, "
      f"pydicom {pydicom.__version__}", file=__import__("sys").stderr)
PY
echo "$py"
