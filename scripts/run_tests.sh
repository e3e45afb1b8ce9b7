#!/usr/bin/env bash
# Set up the environment, then run the test suite. Extra arguments go to pytest.
#
# The suite runs in parallel test files (pytest-xdist, one worker per core, at most 4): most of its
# time is bundle runs in subprocesses whose start-up (importing torch and MONAI) is single-threaded,
# so two workers at one thread each finish far sooner on 2 cores than one worker at two threads.
# MRM_TEST_WORKERS=1 runs everything in one process.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$(bash "$repo/scripts/setup.sh" | tail -n 1)"
cd "$repo"
cores="$(nproc 2>/dev/null || echo 1)"
workers="${MRM_TEST_WORKERS:-$(( cores < 4 ? cores : 4 ))}"
parallel=()
if (( workers > 1 )); then
    # loadfile: a file's tests share one worker, so its module fixtures (trained bundles) are built once
    parallel=(-n "$workers" --dist loadfile)
fi
exec "$py" -m pytest -q -p no:cacheprovider "${parallel[@]}" "$@"
