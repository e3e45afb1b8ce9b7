"""Write files and folders so that a failure never leaves half-written output behind.

Everything is first written next to its destination (same file system, so the final
``os.replace`` is atomic) under a hidden temporary name, and renamed only once complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import MultiRaterDataError

__all__ = ["atomic_write_text", "atomic_write_json", "atomic_torch_save", "atomic_output_dir", "remove_stale_partials"]

# A folder holding this file is a prepared data set; ``overwrite=True`` may replace such a
# folder, but never one that does not look like ours.
DATALIST_NAME = "datalist.json"


def _write_then_rename(path: str | os.PathLike, write, binary: bool = False, ordinary_permissions: bool = False) -> Path:
    """Call ``write(f)`` on a temporary file next to ``path``, fsync, then rename it to ``path``.

    On any error the temporary file is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if ordinary_permissions:  # mkstemp makes the file private to its writer
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> str:
    """Write ``text`` to ``path`` through a temporary file in the same folder, then rename."""
    return str(_write_then_rename(path, lambda f: f.write(text)))


def atomic_write_json(path: str | os.PathLike, obj) -> str:
    """Serialise ``obj`` fully first (so an unserialisable value fails before any write), then write atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_torch_save(obj, path: str | os.PathLike) -> str:
    """``torch.save(obj, path)`` through a temporary file in the same folder, then rename.

    A kill or a full disk during the write leaves the previous file at ``path`` intact (and no
    temporary file behind); the error names the file and the fix.
    """
    import torch

    try:
        return str(_write_then_rename(path, lambda f: torch.save(obj, f), binary=True, ordinary_permissions=True))
    except OSError as e:
        raise OSError(e.errno, f"could not write the checkpoint {path} ({e.strerror or e}); the previous file there, "
                      "if any, is intact; fix: free disk space or choose another folder (bundle_root)") from e


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_partials(out_dir: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.<pid>.*.partial`` folders that a killed writer of ``out_dir`` left behind.

    Only folders whose writer process no longer runs are removed (a data preparation running beside
    this one keeps its folder). Returns the removed folders; each is reported on stdout.
    """
    out_dir = Path(out_dir).absolute()
    removed = []
    for leftover in sorted(out_dir.parent.glob(f".{out_dir.name}.*.partial")):
        parts = leftover.name[len(out_dir.name) + 2:].split(".")
        if not leftover.is_dir() or not parts[0].isdigit() or _alive(int(parts[0])):
            continue
        shutil.rmtree(leftover, ignore_errors=True)
        print(f"removed {leftover}: left by an interrupted run (process {parts[0]} no longer runs)", flush=True)
        removed.append(leftover)
    return removed


@contextmanager
def atomic_output_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``out_dir`` when the block finishes without error.

    On error the temporary folder is removed and ``out_dir`` is left as it was.
    ``out_dir`` may not exist yet or be empty; a non-empty ``out_dir`` is replaced only when
    ``overwrite`` is True *and* it holds a ``datalist.json`` (a data set prepared before),
    so a user's unrelated folder is never deleted.
    """
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise MultiRaterDataError(f"{out_dir} exists and is a file; fix: choose another output folder.")
    non_empty = out_dir.is_dir() and any(out_dir.iterdir())
    if non_empty and not (overwrite and (out_dir / DATALIST_NAME).is_file()):
        why = "pass overwrite=True, on the command line --overwrite, to replace it" if (out_dir / DATALIST_NAME).is_file() else "it is not a prepared data set"
        raise MultiRaterDataError(
            f"{out_dir} exists and is not empty; fix: choose an empty or new output folder ({why})."
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out_dir)
    # the writer's pid in the name: a later run can tell a killed writer's leftovers from a live one's
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.{os.getpid()}.", suffix=".partial"))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the data set is an ordinary folder
    try:
        yield tmp
        if out_dir.is_dir():
            # swap: move the old folder aside first so that out_dir is never missing its datalist
            # while half of the new data set is in place
            old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".old"))
            os.rmdir(old)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
