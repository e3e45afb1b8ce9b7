#!/usr/bin/env bash
# Set up the environment, then run the main job on the embedded default data (lidc-phantom):
# train the dpersona bundle briefly (Stage I, then Stage II; the data set is prepared on first use),
# evaluate it on the test split and print the paper's metric table. Extra arguments go to both
# bundle runs (e.g. --epochs 10).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$(bash "$repo/scripts/setup.sh" | tail -n 1)"
cd "$repo"
bundle=bundles/dpersona
"$py" -m monai.bundle run training --config_file "$bundle/configs/train.json" "$@"
"$py" -m monai.bundle run --config_file "['$bundle/configs/train.json','$bundle/configs/evaluate.json']" "$@"
echo "metric table: $bundle/eval/metrics.csv and $bundle/eval/metrics.json"
