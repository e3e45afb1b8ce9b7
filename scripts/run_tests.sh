#!/usr/bin/env bash
# Set up the environment, then run the test suite. Extra arguments go to pytest.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$(bash "$repo/scripts/setup.sh" | tail -n 1)"
cd "$repo"
exec "$py" -m pytest -q -p no:cacheprovider "$@"
