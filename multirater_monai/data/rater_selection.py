"""Training on one rater's labels when some samples lack that rater (LIDC nodules have 1-4 readers).

A per-rater baseline (the papers' U-Net (A_k)) can only learn from samples that rater k
annotated. Which samples those are depends on whether raters are ranked by area: ranked, the
present raters come first (``RankRatersByArea``), so slot k exists exactly where more than k raters
are present; unranked, slot k is rater k of the datalist. Evaluation keeps every sample: the
metrics skip missing raters themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..utils.errors import MultiRaterDataError

__all__ = ["entries_with_rater", "entries_for_fusion"]


def entries_with_rater(entries: Sequence[dict], rater_index: int, ranked: bool = False) -> list[dict]:
    """The entries in which rater slot ``rater_index`` (0-based) holds an annotation."""
    k = int(rater_index)
    if ranked:
        return [e for e in entries if sum(f is not None for f in e["label"]) > k]
    return [e for e in entries if k < len(e["label"]) and e["label"][k] is not None]


def entries_for_fusion(entries: Sequence[dict], fusion: str, rater_index: int | None = None,
                       ranked: bool = False) -> list[dict]:
    """Training entries for a fusion method: all of them, or for ``fusion="rater"`` those with that rater."""
    if fusion != "rater":
        return list(entries)
    if rater_index is None:
        raise MultiRaterDataError("fusion 'rater' needs fusion_rater (0-based rater index); fix: pass --fusion_rater k.")
    kept = entries_with_rater(entries, rater_index, ranked)
    if not kept:
        raise MultiRaterDataError(
            f"no training sample has rater {rater_index}{' after ranking by area' if ranked else ''}; "
            "fix: choose a rater index below the number of raters per sample."
        )
    print(f"[data] fusion 'rater' {rater_index}: training on the {len(kept)} of {len(entries)} samples "
          "that this rater annotated", flush=True)
    return kept
