"""Per-rater training data when raters are missing: which samples does rater slot k exist in?"""

import pytest

from multirater_monai.data import MultiRaterDataError, entries_for_fusion, entries_with_rater

ENTRIES = [
    {"image": "a", "label": ["a0", None, None, None]},  # one reader
    {"image": "b", "label": [None, "b1", "b2", None]},  # two readers, in slots 1 and 2
    {"image": "c", "label": ["c0", "c1", "c2", "c3"]},  # four readers
]


def test_unranked_slots_are_datalist_raters():
    assert [e["image"] for e in entries_with_rater(ENTRIES, 0)] == ["a", "c"]
    assert [e["image"] for e in entries_with_rater(ENTRIES, 2)] == ["b", "c"]
    assert [e["image"] for e in entries_with_rater(ENTRIES, 3)] == ["c"]


def test_ranked_slot_k_exists_where_more_than_k_raters_are_present():
    # ranking puts present raters first: slot 1 exists in b (2 readers) and c (4 readers)
    assert [e["image"] for e in entries_with_rater(ENTRIES, 0, ranked=True)] == ["a", "b", "c"]
    assert [e["image"] for e in entries_with_rater(ENTRIES, 1, ranked=True)] == ["b", "c"]
    assert [e["image"] for e in entries_with_rater(ENTRIES, 2, ranked=True)] == ["c"]


def test_other_fusions_keep_every_sample_and_bad_rater_is_refused():
    assert entries_for_fusion(ENTRIES, "majority") == ENTRIES
    assert [e["image"] for e in entries_for_fusion(ENTRIES, "rater", 3, ranked=True)] == ["c"]
    with pytest.raises(MultiRaterDataError, match="no training sample has rater 4 after ranking by area"):
        entries_for_fusion(ENTRIES, "rater", 4, ranked=True)
    with pytest.raises(MultiRaterDataError, match="needs fusion_rater"):
        entries_for_fusion(ENTRIES, "rater", None)
