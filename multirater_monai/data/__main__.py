"""Command line: ``python -m multirater_monai.data prepare NAME --out DIR [--option value ...]``.

Examples::

    python -m multirater_monai.data prepare synthetic --out data/synthetic --num_samples 100
    python -m multirater_monai.data prepare qubiq --out data/qubiq --root ../shared/data/qubiq_brain_growth
    python -m multirater_monai.data prepare lidc-phantom --out data/lidc --max_patients 20

Prints the datalist path and the entry count of each section. Bad input prints one line
starting with ``error:`` and exits with status 1.
"""

from __future__ import annotations

import json
import sys

from ..utils.errors import MultiRaterDataError, find_data_error


def prepare(name: str, out: str, **options) -> str:
    """Prepare data set NAME (synthetic, lidc-phantom, qubiq) into folder OUT; options go to its preparer."""
    from .registry import prepare_dataset

    path = prepare_dataset(name, out, **options)
    with open(path) as f:
        data = json.load(f)
    counts = ", ".join(f"{k}: {len(v)}" for k, v in data.items() if isinstance(v, list) and k in ("training", "validation", "test"))
    print(path)
    print(f"{data.get('name', name)}: {counts} (num_raters={data.get('num_raters')})")
    return path


def main(argv: list[str] | None = None) -> int:
    import fire

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__.strip())
        return 0 if argv else 2
    try:
        fire.Fire({"prepare": prepare}, command=argv, serialize=lambda _: None)
    except (MultiRaterDataError, ValueError, FileNotFoundError, ImportError, RuntimeError) as e:
        err = find_data_error(e) or e
        print(f"error: {str(err).strip()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
