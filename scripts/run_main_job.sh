#!/usr/bin/env bash
# Set up the environment, then run the main job on the embedded default data (lidc-phantom):
# train the unet_fusion bundle briefly (the data set is prepared on first use), evaluate it on
# the test split and print the set-to-set metric table. Extra arguments go to the training run
# (e.g. --fusion staple, --epochs 20).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$(bash "$repo/scripts/setup.sh" | tail -n 1)"
cd "$repo"
bundle=bundles/unet_fusion
"$py" -m monai.bundle run training --config_file "$bundle/configs/train.json" "$@"
"$py" -m monai.bundle run --config_file "['$bundle/configs/train.json','$bundle/configs/evaluate.json']" "$@"
echo "metric table: $bundle/eval/metrics.csv and $bundle/eval/metrics.json"
