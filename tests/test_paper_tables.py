"""Every bundle README's "Paper vs ours" table agrees with the bundle's paper configuration.

The table (``bundles/<name>/docs/README.md``) has one row per hyperparameter: the hyperparameter, its
config key (a MONAI bundle id path such as ``network_def#latent_dim``, or ``-`` when the value is not
a config value), the paper's value and source, ours, and why they differ. Ours is a JSON (or Python)
literal in backticks wherever the row names a key; it must equal what the merged configs
``[train.json, train_paper.json]`` (``train_full.json`` for unet_fusion) resolve the key to. A key the
configs do not set resolves to the default of the argument in the component's ``_target_`` (the
network's ``build`` or constructor). Nothing is instantiated: references are followed, ``$``
expressions are compared as written.

So a value changed in ``train_paper.json`` without the README, or a README row that names a key
which no longer exists, fails here; and every key that ``train_paper.json`` sets (data and runtime
plumbing aside) must have a row.
"""

from __future__ import annotations

import ast
import inspect
import json
import pydoc
import re
from functools import lru_cache
from pathlib import Path

import pytest

from .conftest import BUNDLES, REPO_ROOT

HEADING = re.compile(r"^#{2,6}\s.*\bPaper vs ours\b", re.IGNORECASE)
CELL_SPLIT = re.compile(r"(?<!\\)\|")  # a cell may hold an escaped pipe, "q(z \| x)"
NO_KEY = {"", "-", "\u2014", "\u2013"}
# data location, patient subset and loader workers: plumbing, not hyperparameters of the method
PLUMBING = {"dataset_options", "dataset_dir", "num_workers"}


def paper_config(name: str) -> Path:
    configs = REPO_ROOT / "bundles" / name / "configs"
    for stem in ("train_paper", "train_full"):
        if (configs / f"{stem}.json").is_file():
            return configs / f"{stem}.json"
    raise FileNotFoundError(f"bundles/{name}/configs has neither train_paper.json nor train_full.json")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in CELL_SPLIT.split(line.strip().strip("|"))]


def _unquote(cell: str) -> str:
    cell = cell.strip()
    return cell[1:-1].strip() if len(cell) >= 2 and cell[0] == cell[-1] == "`" else cell


def paper_table(readme: Path) -> list[dict[str, str]]:
    """The rows of the README's "Paper vs ours" table, as {lower-cased header: cell}."""
    lines = readme.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if HEADING.match(line)]
    assert len(starts) == 1, f"{readme}: expected one 'Paper vs ours' heading, found {len(starts)}"
    table = []
    for line in lines[starts[0] + 1:]:
        if line.lstrip().startswith("|"):
            table.append(line)
        elif table or line.lstrip().startswith("#"):
            break
    assert len(table) > 2, f"{readme}: no table under the 'Paper vs ours' heading"
    header = [h.lower() for h in _cells(table[0])]
    for column in ("config key", "paper", "ours"):
        assert column in header, f"{readme}: the 'Paper vs ours' table has no '{column}' column ({header})"
    rows = []
    for line in table[2:]:
        cells = _cells(line)
        assert len(cells) == len(header), f"{readme}: row has {len(cells)} cells, header {len(header)}: {line}"
        rows.append(dict(zip(header, cells)))
    return rows


def _literal(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return ast.literal_eval(text)


def _plain(value):
    """Tuples as lists, so a config list and a signature default tuple compare."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@lru_cache(maxsize=None)
def merged_parser(name: str):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(REPO_ROOT / "bundles" / name / "configs" / "train.json"), str(paper_config(name))])
    return parser


def _default(parser, key: str):
    """The default of ``key``'s argument in its parent component's ``_target_`` (build or constructor)."""
    parent, _, argument = key.rpartition("#")
    target = parser[parent].get("_target_") if parent and isinstance(parser[parent], dict) else None
    if target is None:
        raise KeyError(f"{key} is not in the configs and {parent or 'its parent'} has no _target_")
    component = pydoc.locate(target)
    if component is None:
        raise KeyError(f"{key}: cannot locate {target}")
    candidates = [component]
    owner = getattr(component, "__self__", None)  # a classmethod such as DPersona.build forwards **kwargs
    if inspect.isclass(owner):
        candidates.append(owner)
    for candidate in candidates:
        parameter = inspect.signature(candidate).parameters.get(argument)
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    raise KeyError(f"{key}: neither the configs nor {target}'s signature give {argument!r} a value")


def resolved(name: str, key: str):
    """What the merged configs give ``key``: references followed, expressions as written, nothing built."""
    parser = merged_parser(name)
    if key not in parser:
        return _default(parser, key)
    value = parser.get_parsed_content(key, instantiate=False, eval_expr=False)
    if hasattr(value, "get_config"):  # an unevaluated ConfigExpression
        value = value.get_config()
    return value


def _keyed_rows(name: str) -> list[dict[str, str]]:
    rows = paper_table(REPO_ROOT / "bundles" / name / "docs" / "README.md")
    return [row for row in rows if _unquote(row["config key"]) not in NO_KEY]


@pytest.mark.parametrize("name", BUNDLES)
def test_readme_paper_table_matches_the_paper_configuration(name):
    rows = _keyed_rows(name)
    assert len(rows) >= 8, f"bundles/{name}/docs/README.md: the 'Paper vs ours' table names only {len(rows)} keys"
    wrong = []
    for row in rows:
        key, ours = _unquote(row["config key"]), _unquote(row["ours"])
        try:
            expected = _literal(ours)
        except (ValueError, SyntaxError):
            wrong.append(f"{key}: the 'ours' cell {row['ours']!r} is not a literal in backticks")
            continue
        actual = resolved(name, key)
        if _plain(actual) != _plain(expected):
            wrong.append(f"{key}: README says {expected!r}, the configs give {actual!r}")
    assert not wrong, (
        f"bundles/{name}/docs/README.md 'Paper vs ours' disagrees with train.json + {paper_config(name).name}; "
        "fix the table (or the config):\n" + "\n".join(wrong)
    )


@pytest.mark.parametrize("name", BUNDLES)
def test_readme_paper_table_covers_every_paper_config_key(name):
    path = paper_config(name)
    set_here = [k for k in json.loads(path.read_text()) if k not in PLUMBING]
    keys = {_unquote(row["config key"]) for row in _keyed_rows(name)}
    missing = [k for k in set_here if k not in keys]
    assert not missing, f"bundles/{name}/docs/README.md 'Paper vs ours' has no row for {missing} set in {path.name}"


def test_table_parser_reads_escaped_pipes_and_literals(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        "# x\n\n### Paper vs ours (`train_paper.json`)\n\n"
        "| hyperparameter | config key | paper | ours | why |\n|---|---|---|---|---|\n"
        "| lr | `learning_rate` | 1e-4 (Sec. 4.2) | `1e-4` | same |\n"
        "| z | - | q(z \\| x) (eq. 10) | mean | differs |\n\nafter\n| not | part |\n"
    )
    rows = paper_table(readme)
    assert [r["config key"] for r in rows] == ["`learning_rate`", "-"]
    assert rows[1]["paper"] == "q(z \\| x) (eq. 10)"
    assert _literal(_unquote(rows[0]["ours"])) == 0.0001
    assert _plain((32, 64)) == [32, 64]
