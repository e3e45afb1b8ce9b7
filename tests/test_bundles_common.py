"""The checks every bundle must pass, one parametrised test each over all bundles.

* the bundle lint (configs are wiring: no lambda, no print, no long ``$`` expression, the shared keys);
* MONAI's own bundle tooling finds what it looks for: ``ConfigWorkflow(...).check_properties()`` reports
  no missing property for ``train`` and ``infer``, ``verify_net_in_out`` passes;
* the TorchScript export (``ckpt_export``) reproduces the checkpoint's outputs;
* inference accepts every image layout training accepts, at any size, and writes each output with the
  input's shape and affine: QUBIQ's ``(128, 128, 1)``, plain ``(64, 64)``, ``(100, 100)`` (not a multiple
  of the network's divisor) and channel-first ``(1, 64, 64)``;
* evaluation without a trained checkpoint stops with the path and the command that makes it.

The checkpoints here are untrained networks saved by the test (what is checked does not depend on
training); the per-bundle test files check what each method learns.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from multirater_monai.utils.errors import project_error

from .bundle_lint import MAX_EXPRESSION, bundle_problems, config_problems
from .bundle_runner import SYNTHETIC, TINY, bundle, bundle_ok, overrides_dict
from .conftest import BUNDLES, REPO_ROOT

LAYOUTS = {"qubiq_like": (128, 128, 1), "plain64": (64, 64), "odd100": (100, 100), "channel_first": (1, 64, 64)}
AFFINE = np.array([[0.7, 0, 0, 10.0], [0, 0.8, 0, -5.0], [0, 0, 2.0, 3.0], [0, 0, 0, 1]])


def _configs(name: str) -> Path:
    return REPO_ROOT / "bundles" / name / "configs"


def _network(name: str, **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(_configs(name) / "inference.json")
    parser.update({**overrides_dict(TINY[name]), **overrides})
    return parser.get_parsed_content("network_def")


@pytest.fixture(scope="module")
def untrained_roots(tmp_path_factory) -> dict[str, Path]:
    """Per bundle, a bundle root whose models/ holds an untrained (seeded) tiny network as every checkpoint."""
    roots = {}
    for name in BUNDLES:
        root = tmp_path_factory.mktemp(name)
        (root / "models").mkdir()
        torch.manual_seed(0)
        state = _network(name).state_dict()
        for ckpt in ("model.pt", "model_stage1.pt"):
            torch.save(state, root / "models" / ckpt)
        roots[name] = root
    return roots


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("layouts")
    rng = np.random.default_rng(0)
    for stem, shape in LAYOUTS.items():
        nib.save(nib.Nifti1Image(rng.random(shape).astype(np.float32), AFFINE), folder / f"{stem}.nii.gz")
    return folder


# ----------------------------------------------------------------------------- lint
@pytest.mark.parametrize("name", BUNDLES)
def test_bundle_lint_passes(name):
    assert bundle_problems(REPO_ROOT / "bundles" / name) == []


def test_lint_names_lambdas_prints_and_long_expressions(tmp_path):
    bad = REPO_ROOT / "bundles" / ".lint_probe.json"  # inside the repository: the messages name it relative to it
    long_expr = "$" + "x" * MAX_EXPRESSION
    try:
        bad.write_text(json.dumps({"a": {"b": "$lambda x: x"}, "run": ["$print('hi')"], "c": long_expr,
                                   "imports": ["$import " + "m" * 120]}))
        assert config_problems(bad) == [
            "bundles/.lint_probe.json: a#b holds a lambda; write a component in multirater_monai",
            "bundles/.lint_probe.json: run#0 calls print; use a handler (e.g. InferenceSummaryHandler)",
            f"bundles/.lint_probe.json: c is a {MAX_EXPRESSION + 1}-character $ expression (> {MAX_EXPRESSION}); "
            "make it a component",
        ]
    finally:
        bad.unlink()


# ----------------------------------------------------------------------------- MONAI tooling
@pytest.mark.slow
@pytest.mark.parametrize("name", BUNDLES)
def test_check_properties_finds_every_train_and_infer_property(name, untrained_roots, synthetic_dir, layouts):
    from monai.bundle import ConfigWorkflow

    root = str(untrained_roots[name])
    tiny = overrides_dict(TINY[name])
    train = ConfigWorkflow(config_file=str(_configs(name) / "train.json"), workflow_type="train", bundle_root=root,
                           dataset_dir=str(synthetic_dir), **overrides_dict(SYNTHETIC), **tiny)
    train.initialize()
    assert train.check_properties() == []
    infer = ConfigWorkflow(config_file=str(_configs(name) / "inference.json"), workflow_type="infer", bundle_root=root,
                           input_dir=str(layouts), **tiny)
    infer.initialize()
    assert infer.check_properties() == []


@pytest.mark.parametrize("name", BUNDLES)
def test_verify_net_in_out_passes(name):
    from monai.bundle import verify_net_in_out

    configs = _configs(name)
    verify_net_in_out(net_id="network_def", meta_file=str(configs / "metadata.json"),
                      config_file=str(configs / "inference.json"))


@pytest.mark.parametrize("name", BUNDLES)
def test_torchscript_export_matches_the_checkpoint(name, untrained_roots, tmp_path):
    from monai.bundle import ckpt_export

    root, configs = untrained_roots[name], _configs(name)
    ts_path = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts_path), ckpt_file=str(root / "models" / "model.pt"),
                meta_file=str(configs / "metadata.json"), config_file=str(configs / "inference.json"),
                bundle_root=str(root), **overrides_dict(TINY[name]))
    exported = torch.jit.load(str(ts_path))
    net = _network(name)
    net.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        expected = net.eval()(x)
        assert expected.shape[1] == sum(net.output_groups().values())
        assert torch.allclose(exported(x), expected, atol=1e-5)


# ----------------------------------------------------------------------------- inference geometry
@pytest.mark.slow
@pytest.mark.parametrize("name", BUNDLES)
def test_inference_writes_every_layout_in_the_input_geometry(name, untrained_roots, layouts, tmp_path):
    out_dir = tmp_path / "pred"
    log = bundle_ok(["run", "--config_file", str(_configs(name) / "inference.json"), "--bundle_root",
                     str(untrained_roots[name]), "--input_dir", str(layouts), "--output_dir", str(out_dir), *TINY[name]])
    outputs = json.loads((_configs(name) / "inference.json").read_text())["outputs"]
    assert f"[inference] wrote {len(LAYOUTS)} image(s): {', '.join(outputs)} in {out_dir}" in log
    for stem, shape in LAYOUTS.items():
        for output in outputs:
            written = nib.load(out_dir / f"{stem}_{output}.nii.gz")
            # a one-channel map has the input's exact shape; C > 1 channels add a last axis of length C
            assert written.shape[: len(shape)] == shape, (stem, output, written.shape)
            assert written.ndim == len(shape) or (written.ndim == len(shape) + 1 and written.shape[-1] > 1)
            assert np.allclose(written.affine, AFFINE), (stem, output)
        assert (out_dir / f"{stem}_overlay.png").is_file()
    assert not list(out_dir.glob(".*")), "no temporary file may be left behind"


@pytest.mark.slow
def test_inference_on_a_3d_volume_runs_slice_by_slice_or_names_the_fix(untrained_roots, tmp_path):
    name = "prob_unet"
    folder = tmp_path / "volumes"
    folder.mkdir()
    volume = np.random.default_rng(1).random((32, 24, 5)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, AFFINE), folder / "vol.nii.gz")
    common = ["run", "--config_file", str(_configs(name) / "inference.json"), "--bundle_root", str(untrained_roots[name]),
              "--input_dir", str(folder), *TINY[name], "--num_samples", "3"]
    # default: a 2D bundle runs a volume slice by slice and writes a volume in the input's geometry
    bundle_ok([*common, "--output_dir", str(tmp_path / "o")])
    samples = nib.load(tmp_path / "o" / "vol_samples.nii.gz")
    assert samples.shape == (32, 24, 5, 3) and np.allclose(samples.affine, AFFINE)
    # slice 3 of the volume on its own, as a 2D image, gives slice 3 of the volume's output
    single = tmp_path / "single"
    single.mkdir()
    nib.save(nib.Nifti1Image(volume[:, :, 3], AFFINE), single / "s3.nii.gz")
    bundle_ok([*common[:5], "--input_dir", str(single), *common[7:], "--output_dir", str(tmp_path / "o2")])
    np.testing.assert_array_equal(nib.load(tmp_path / "o2" / "s3_samples.nii.gz").get_fdata(),
                                  samples.get_fdata()[:, :, 3])

    proc = bundle([*common, "--output_dir", str(tmp_path / "o3"), "--slice_volumes", "False"])
    assert proc.returncode != 0
    assert f"{folder / 'vol.nii.gz'} has channel-first shape (1, 32, 24, 5), which is not 2D; fix:" in proc.stderr
    # the project's message is the last line, after MONAI's "Failed to evaluate ConfigExpression" traceback
    assert "Failed to evaluate" in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ERROR: {folder / 'vol.nii.gz'} has channel-first shape (1, 32, 24, 5), which is not 2D; fix:")
    assert last.endswith("(inference: --slice_volumes True runs a 2D bundle slice by slice).")


# ----------------------------------------------------------------------------- missing checkpoint
@pytest.mark.parametrize("name", BUNDLES)
def test_evaluate_without_checkpoint_names_the_path_and_the_command(name, tmp_path, synthetic_dir):
    from monai.bundle import run

    configs = _configs(name)
    needs_stage1 = "@stage1_checkpoint" in json.dumps(json.loads((configs / "evaluate.json").read_text())["initialize"])
    missing = tmp_path / "models" / ("model_stage1.pt" if needs_stage1 else "model.pt")
    with pytest.raises(RuntimeError) as info:
        run(config_file=[str(configs / "train.json"), str(configs / "evaluate.json")], bundle_root=str(tmp_path),
            dataset_dir=str(synthetic_dir), **overrides_dict(SYNTHETIC), **overrides_dict(TINY[name]))
    cause = info.value
    while cause.__cause__ is not None:
        cause = cause.__cause__
    assert isinstance(cause, FileNotFoundError)
    assert str(cause) == (f"checkpoint not found: {missing}; fix: train the bundle into this bundle root first "
                          f"(python -m monai.bundle run training --config_file <the bundle's configs/train.json> "
                          f"--bundle_root {tmp_path}), or pass --bundle_root of a trained run")
    # what an uncaught error prints last (multirater_monai.utils.errors.install_error_summary)
    assert project_error(info.value) is cause
