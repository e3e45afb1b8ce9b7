"""Every bundle's metadata validates against MONAI's schema, and model_zoo.json is current."""

from __future__ import annotations

import json

import jsonschema
import pytest

from multirater_monai import zoo

from .conftest import BUNDLES, REPO_ROOT, SCHEMA_PATH, require_shared


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_validates_against_monai_schema(bundle):
    schema = json.loads(require_shared(SCHEMA_PATH).read_text())
    metadata = json.loads((REPO_ROOT / "bundles" / bundle / "configs" / "metadata.json").read_text())
    jsonschema.validate(metadata, schema)


def test_schema_rejects_metadata_without_network_format():
    # The check above must be able to fail: a metadata file missing a required key is refused.
    schema = json.loads(require_shared(SCHEMA_PATH).read_text())
    metadata = json.loads((REPO_ROOT / "bundles" / BUNDLES[0] / "configs" / "metadata.json").read_text())
    del metadata["network_data_format"]
    with pytest.raises(jsonschema.ValidationError, match="network_data_format"):
        jsonschema.validate(metadata, schema)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundle_has_standard_files(bundle):
    root = REPO_ROOT / "bundles" / bundle
    for rel in ("configs/train.json", "configs/evaluate.json", "configs/inference.json", "configs/logging.conf",
                "docs/README.md", "docs/data_license.txt", "LICENSE"):
        assert (root / rel).is_file(), f"{bundle} lacks {rel}"
    train = json.loads((root / "configs" / "train.json").read_text())
    for key in ("bundle_root", "dataset_dir", "device", "network_def", "train", "validate", "run", "training"):
        assert key in train, f"{bundle}/configs/train.json lacks the standard key {key}"


# the fields the MONAI model zoo's bundles carry beyond the schema's required ones
ZOO_FIELDS = ("changelog", "monai_version", "pytorch_version", "numpy_version", "required_packages_version",
              "authors", "copyright", "data_source", "intended_use", "references", "eval_metrics", "network_data_format")


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_has_the_model_zoo_fields_and_a_changelog_entry_for_its_version(bundle):
    metadata = json.loads((REPO_ROOT / "bundles" / bundle / "configs" / "metadata.json").read_text())
    missing = [k for k in ZOO_FIELDS if not metadata.get(k)]
    assert not missing, f"{bundle}/configs/metadata.json lacks {missing}"
    assert metadata["version"] in metadata["changelog"], "the model zoo refuses a version without a changelog entry"
    assert metadata["required_packages_version"].get("multirater_monai"), "the bundles' own package must be named"
    assert "pip install" in metadata.get("required_packages_source", {}).get("multirater_monai", ""), \
        "say where multirater_monai comes from (it is not on PyPI)"


def test_model_zoo_index_matches_bundles():
    stale = zoo.check_index(REPO_ROOT)
    assert not stale, f"model_zoo.json is stale for {stale}; run: python -m multirater_monai.zoo build"


def test_zoo_checksum_tracks_bundle_content(tmp_path):
    # Copy a bundle, change one config byte: the sha1 changes; the zip itself is reproducible.
    import shutil

    src = REPO_ROOT / "bundles" / BUNDLES[0]
    dst = tmp_path / "bundles" / src.name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("models", "eval", "predictions"))
    first = zoo.bundle_zip_bytes(dst)
    assert zoo.bundle_zip_bytes(dst) == first
    (dst / "configs" / "train.json").write_text((dst / "configs" / "train.json").read_text() + " ")
    assert zoo.bundle_zip_bytes(dst) != first


def test_record_reference_metrics_from_summary_and_from_table(tmp_path):
    bundle = tmp_path / "b"
    (bundle / "eval").mkdir(parents=True)
    (bundle / "docs").mkdir()
    (bundle / "eval" / "metrics.json").write_text(json.dumps(
        {"num_images": 3, "compat": "default", "summary": {"ged": 0.123456, "dice_match": None}}))
    saved = json.loads(zoo.record_reference_metrics(bundle, "run A").read_text())
    assert saved == {"note": "run A", "num_images": 3, "compat": "default", "metrics": {"ged": 0.1235, "dice_match": None}}
    (bundle / "eval" / "metrics.json").write_text(json.dumps(
        {"settings": [], "rows": [{"setting": "Stage I", "ged": 0.5}, {"setting": "Stage II", "ged": 0.25}]}))
    saved = json.loads(zoo.record_reference_metrics(bundle, "run B").read_text())
    assert saved["metrics"] == {"Stage I": {"ged": 0.5}, "Stage II": {"ged": 0.25}}
