"""`discover/labels.py`: the rules a person's names must follow (nothing written when broken),
the cluster -> class mapping, the atomic save, and stale or broken label files refused."""

from __future__ import annotations

import json
import os

import pytest

from uniframework.discover.labels import (
    LabelError,
    apply_labels,
    class_of_cluster,
    cluster_names,
    inverse_mapping,
    read_discovered,
    save_labels,
    validate_labels,
)
from uniframework.errors import UserError
from uniframework.io import write_json

KNOWN = ["zero", "one", "two"]
# 3 known classes; 4 clusters (model labels 3..6): clusters 3, 4, 5 matched true classes
# 7, 5, 8; cluster 6 matched none
DISCOVERED = {
    "method": "kmeans",
    "num_known": 3,
    "num_novel": 4,
    "index": [10, 11, 12, 13, 14, 15, 16],
    "label": [3, 4, 3, 5, 6, 4, 5],
    "mapping": {"3": 7, "4": 5, "5": 8, "6": None},
    "class_names": ["new-1", "new-2", "new-3", "new-4"],
}
GOOD = {
    "classes": [{"name": "seven", "clusters": [3]}, {"name": "five", "clusters": [4, 5]}],
    "rejected": [6],
}


def _labels(*names, rejected=(6,)):
    """One class per name, on clusters 3, 4, 5 in turn."""
    return {
        "classes": [{"name": n, "clusters": [3 + i]} for i, n in enumerate(names)],
        "rejected": list(rejected),
    }


def test_good_labels_pass():
    assert validate_labels(GOOD, DISCOVERED, KNOWN) == []


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (_labels("seven", "  ", "eight"), "new-2: the name is empty"),
        (_labels("seven", "", "eight"), "new-2: the name is empty"),
        (_labels("seven", "eight", "Seven "), "new-3: 'Seven' is already the name of new-1"),
        (_labels("seven", "One", "eight"), "new-2: 'One' is a known class"),
        (_labels("seven", "unknown", "eight"), "'unknown' is reserved"),
        (_labels("seven", "x" * 61, "eight"), "over 60 characters"),
        (_labels("seven", "eight", "nine", rejected=()), "new-4 neither named nor rejected"),
        (_labels("seven", "eight", "nine", rejected=(6, 3)), "new-1 placed more than once"),
        (_labels("seven", "eight", "nine", rejected=(6, 9)), "9 is not a cluster of this run"),
        ({"classes": "seven"}, "must be lists"),
        ({"classes": [{"name": "seven"}], "rejected": [4, 5, 6]}, "has no 'clusters' list"),
    ],
)
def test_bad_labels_are_named(labels, message):
    errors = validate_labels(labels, DISCOVERED, KNOWN)
    assert any(message in e for e in errors), errors


def test_too_few_classes_for_the_incremental_tasks():
    one = {"classes": [{"name": "all", "clusters": [3, 4, 5, 6]}], "rejected": []}
    assert validate_labels(one, DISCOVERED, KNOWN, min_classes=1) == []
    (error,) = validate_labels(one, DISCOVERED, KNOWN, min_classes=2)
    assert "1 class(es) named" in error and "at least 2" in error


def test_cluster_to_class_mapping():
    # the classes' order gives the model labels k, k+1, ...; merged clusters share one
    assert class_of_cluster(GOOD, 3) == {3: 3, 4: 4, 5: 4, 6: None}
    out = apply_labels(DISCOVERED, GOOD)
    assert out["num_novel"] == 2 and out["class_names"] == ["seven", "five"]
    assert out["index"] == [10, 11, 12, 13, 15, 16]  # image 14 (rejected cluster 6) left out
    assert out["label"] == [3, 4, 3, 4, 4, 4]
    assert out["covers"] == {"3": [7], "4": [5, 8]} and out["mapping"] == {"3": 7, "4": 5}
    # a test image of true class 5 or 8 is right when called "five"; 6's class is gone
    assert inverse_mapping(out) == {7: 3, 5: 4, 8: 4}
    assert inverse_mapping(DISCOVERED) == {7: 3, 5: 4, 8: 5}
    assert cluster_names(DISCOVERED, GOOD) == ["seven", "five", "five", "unknown"]
    assert cluster_names(DISCOVERED, None) == DISCOVERED["class_names"]


@pytest.fixture
def folder(tmp_path):
    write_json(tmp_path / "discovered.json", DISCOVERED)
    return tmp_path


def test_save_is_atomic_and_read_back(folder, monkeypatch):
    path = save_labels(folder, GOOD, KNOWN, min_classes=2)
    saved = json.loads(path.read_text())
    assert saved["classes"] == GOOD["classes"] and saved["rejected"] == [6]
    assert saved["num_known"] == 3 and len(saved["discovered_sha256"]) == 64
    assert sorted(p.name for p in folder.iterdir()) == ["discovered.json", "labels.json"]
    out = read_discovered(folder / "discovered.json", KNOWN)
    assert out["class_names"] == ["seven", "five"] and len(out["labels_sha256"]) == 64
    # a write cut off before the rename leaves the old file and no temporary one
    before = path.read_text()

    def crash(src, dst):
        raise OSError("killed")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        save_labels(folder, _labels("a", "b", "c"), KNOWN)
    assert path.read_text() == before
    assert sorted(p.name for p in folder.iterdir()) == ["discovered.json", "labels.json"]


def test_bad_labels_write_nothing(folder):
    with pytest.raises(LabelError) as err:
        save_labels(folder, _labels("", "one", "seven ", rejected=()), KNOWN)
    assert len(err.value.errors) == 3  # empty, known class, a cluster left unplaced
    assert not (folder / "labels.json").exists()
    save_labels(folder, GOOD, KNOWN)
    before = (folder / "labels.json").read_text()
    with pytest.raises(LabelError, match="already the name"):
        save_labels(folder, _labels("seven", "eight", "SEVEN"), KNOWN)
    assert (folder / "labels.json").read_text() == before


def test_stale_or_broken_labels_are_refused(folder):
    save_labels(folder, GOOD, KNOWN)
    # discover ran again: the labels name clusters that are gone
    write_json(folder / "discovered.json", {**DISCOVERED, "label": [3, 3, 3, 5, 6, 4, 5]})
    with pytest.raises(UserError, match="earlier discover result"):
        read_discovered(folder / "discovered.json", KNOWN)
    write_json(folder / "discovered.json", DISCOVERED)
    assert read_discovered(folder / "discovered.json", KNOWN)["num_novel"] == 2
    # a hand edit that breaks a rule
    labels = json.loads((folder / "labels.json").read_text())
    labels["classes"][0]["name"] = "Two"
    write_json(folder / "labels.json", labels)
    with pytest.raises(UserError, match="'Two' is a known class.*label page"):
        read_discovered(folder / "discovered.json", KNOWN)
