#!/usr/bin/env bash
# Set up the environment, then run the main job on the embedded default data (lidc-phantom):
# train the dpersona bundle briefly (Stage I, then Stage II; the data set is prepared on first use),
# evaluate it on the test split and print the paper's metric table. Extra arguments go to both
# bundle runs (e.g. --epochs 10). The run writes into runs/main_job/dpersona (its own bundle root), so
# the weights shipped in bundles/dpersona/models stay as committed.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$(bash "$repo/scripts/setup.sh" | tail -n 1)"
cd "$repo"
bundle=bundles/dpersona
root=runs/main_job/dpersona
mkdir -p "$root"
"$py" -m monai.bundle run training --config_file "$bundle/configs/train.json" --bundle_root "$root" "$@"
"$py" -m monai.bundle run --config_file "['$bundle/configs/train.json','$bundle/configs/evaluate.json']" --bundle_root "$root" "$@"
echo "metric table: $root/eval/metrics.csv and $root/eval/metrics.json"
