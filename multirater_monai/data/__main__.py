"""Command line: ``python -m multirater_monai.data prepare NAME --out DIR [--option value ...]``,
and ``python -m multirater_monai.data overlay DATALIST --out PNG [--section training --index 0]`` to look at one
prepared sample (every rater's contour on the image; one picture per structure).

Examples::

    python -m multirater_monai.data prepare synthetic --out data/synthetic --num_samples 100
    python -m multirater_monai.data prepare qubiq --out data/qubiq --root ../shared/data/qubiq_brain_growth
    python -m multirater_monai.data prepare lidc-phantom --out data/lidc --max_patients 20
    python -m multirater_monai.data prepare folder --out data/npc --root /data/npc --label "{subject}/label_r{rater}.nii.gz"
    python -m multirater_monai.data prepare riga --out data/riga --root /data/RIGA
    python -m multirater_monai.data prepare lidc --out data/lidc-ct --root /data/LIDC-IDRI --fold 0
    python -m multirater_monai.data overlay data/riga/datalist.json --out riga.png --section test

Prints the datalist path and the entry count of each section. Bad input prints one line
starting with ``error:`` and exits with status 1.
"""

from __future__ import annotations

import json
import sys

from ..utils.errors import MultiRaterDataError, find_data_error


def prepare(name: str, out: str, **options) -> str:
    """Prepare data set NAME (synthetic, lidc-phantom, qubiq, folder, riga, lidc) into folder OUT; options go to its preparer."""
    from .registry import prepare_dataset

    path = prepare_dataset(name, out, **options)
    with open(path) as f:
        data = json.load(f)
    counts = ", ".join(f"{k}: {len(v)}" for k, v in data.items() if isinstance(v, list) and k in ("training", "validation", "test"))
    print(path)
    print(f"{data.get('name', name)}: {counts} (num_raters={data.get('num_raters')})")
    return path


def overlay(datalist: str, out: str, section: str = "training", index: int = 0) -> list[str]:
    """Draw sample ``index`` of ``section`` with every rater's contour into OUT (``OUT_<structure>.png`` for each
    structure when the data set has several); prints the files written."""
    from pathlib import Path

    from ..transforms import MultiRaterPreprocessing
    from ..visualize import save_overlay_png
    from .datalist import load_multirater_datalist, read_datalist_header

    header = read_datalist_header(datalist)
    entries = load_multirater_datalist(datalist, section)
    if not 0 <= int(index) < len(entries):
        raise MultiRaterDataError(f"{datalist} [{section}] has {len(entries)} entries; fix: choose index 0..{len(entries) - 1}.")
    num_raters = int(header.get("num_raters") or len(entries[index]["label"]))
    structures = header.get("structures") or [None]
    sample = MultiRaterPreprocessing(spatial_dims=header.get("spatial_dims", 2),
                                     num_raters=num_raters * len(structures))(entries[int(index)])
    names = header.get("rater_names") or [f"A{r + 1}" for r in range(num_raters)]
    written = []
    for k, structure in enumerate(structures):
        path = str(out) if structure is None else str(Path(out).with_name(f"{Path(out).stem}_{structure}.png"))
        part = slice(k * num_raters, (k + 1) * num_raters)
        save_overlay_png(path, sample["image"], sample["label"][part], rater_mask=sample["rater_mask"][part],
                         rater_names=names, title=f"{entries[int(index)].get('case_id', index)}"
                         + (f" ({structure})" if structure else ""))
        print(path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    import fire

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__.strip())
        return 0 if argv else 2
    try:
        fire.Fire({"prepare": prepare, "overlay": overlay}, command=argv, serialize=lambda _: None)
    except (MultiRaterDataError, ValueError, FileNotFoundError, ImportError, RuntimeError) as e:
        err = find_data_error(e) or e
        print(f"error: {str(err).strip()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
