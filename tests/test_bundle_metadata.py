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


@pytest.mark.parametrize("bundle", BUNDLES)
def test_channel_def_names_every_channel_of_the_inference_network(bundle):
    # MONAI Label's stock bundle tasks parse channel_def keys as integers: one key per channel, in order.
    pred = json.loads((REPO_ROOT / "bundles" / bundle / "configs" / "metadata.json").read_text())[
        "network_data_format"]["outputs"]["pred"]
    assert list(pred["channel_def"]) == [str(i) for i in range(pred["num_channels"])]
    assert pred["channel_def"] == zoo.expected_channel_def(REPO_ROOT / "bundles" / bundle), (
        "stale channel_def; run: python -m multirater_monai.zoo channels")


class _Groups:
    """A stand-in with the method interface's output description (what channel naming reads)."""

    def __init__(self, groups, num_raters, num_structures=1):
        self.groups, self.num_raters, self.num_structures = groups, num_raters, num_structures

    def output_groups(self):
        return self.groups


def test_channel_names_of_known_layouts():
    from multirater_monai.networks import output_channel_names

    # AVAP's layout, R = 2 raters, K = 2 structures: K * (R + 1) = 6 agreement classes, then K * R = 4 masks
    avap = _Groups({"agreement_logits": 6, "personalized": 4}, num_raters=2, num_structures=2)
    assert [n for n, _ in output_channel_names(avap, ["ann", "bob"])] == [
        "s1_agreement_0", "s1_agreement_1", "s1_agreement_2", "s2_agreement_0", "s2_agreement_1", "s2_agreement_2",
        "s1_ann", "s1_bob", "s2_ann", "s2_bob"]
    both = _Groups({"personalized": 3, "samples": 2}, num_raters=3)
    assert output_channel_names(both, ["x", "y", "z"]) == [
        ("x", "x: logit of rater x's personalized mask"), ("y", "y: logit of rater y's personalized mask"),
        ("z", "z: logit of rater z's personalized mask"),
        ("sample_1", "sample_1: logit of plausible segmentation 1 of 2"),
        ("sample_2", "sample_2: logit of plausible segmentation 2 of 2")]
    with pytest.raises(ValueError, match="2 rater names"):
        output_channel_names(both, ["x", "y"])
    with pytest.raises(ValueError, match="group 'personalized' has 5 channels, named 3"):
        output_channel_names(_Groups({"personalized": 5}, num_raters=3), ["x", "y", "z"])


def test_lint_refuses_range_keys(tmp_path):
    from .bundle_lint import channel_def_problems

    probe = REPO_ROOT / "bundles" / ".channel_probe.json"
    try:
        probe.write_text(json.dumps({"network_data_format": {"outputs": {"pred": {
            "num_channels": 5, "channel_def": {"0-3": "raters", "4": "consensus"}}}}}))
        assert channel_def_problems(probe) == [
            "bundles/.channel_probe.json: outputs#pred#channel_def has keys ['0-3', '4'], not one key per channel "
            "['0', '1', '2', '...']; fix: python -m multirater_monai.zoo channels"]
    finally:
        probe.unlink()
