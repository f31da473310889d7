"""`discover/labels.py`: the rules a person's names must follow (nothing written when broken),
the cluster -> class mapping, the atomic save, and stale or broken label files refused; a
split cluster: every part placed once, the assignment checked, each part's images its class."""

from __future__ import annotations

import json
import os

import pytest

from uniframework.discover.labels import (
    LabelError,
    apply_labels,
    class_of_cluster,
    cluster_names,
    describe_labels,
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


# cluster 4 (images 11 and 15) split into 2 parts: part 1 joins cluster 5 as "five"
SPLIT = {
    "classes": [
        {"name": "seven", "clusters": [3]},
        {"name": "five", "clusters": ["4.1", 5]},
        {"name": "nine", "clusters": ["4.2"]},
    ],
    "rejected": [6],
    "splits": {"4": {"parts": 2, "part_of": {"11": 1, "15": 2}}},
}


def _split(classes=None, rejected=(6,), parts=2, part_of=None, key="4"):
    """SPLIT with one thing changed."""
    return {
        "classes": SPLIT["classes"] if classes is None else classes,
        "rejected": list(rejected),
        "splits": {key: {"parts": parts, "part_of": part_of or {"11": 1, "15": 2}}},
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


def test_good_split_passes():
    assert validate_labels(SPLIT, DISCOVERED, KNOWN) == []


ONE_PART = [{"name": "seven", "clusters": [3]}, {"name": "five", "clusters": ["4.1", 5]}]


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        # a part left out, placed twice, or the split cluster named itself
        (_split(classes=ONE_PART), "new-2.2 neither named nor rejected"),
        (_split(rejected=(6, "4.1")), "new-2.1 placed more than once"),
        (
            _split(classes=[*ONE_PART[:1], {"name": "five", "clusters": [4, 5]}]),
            "new-2 is split: name or reject each of its parts (new-2.1, new-2.2), not new-2",
        ),
        # a part index out of range: in the classes, or in the assignment
        (_split(rejected=(6, "4.3")), "'4.3': new-2 is split into 2 parts, so it has no part 3"),
        (
            _split(part_of={"11": 1, "15": 3}),
            "new-2: part 3 is out of range (it is split into 1..2)",
        ),
        (_split(rejected=(6, "4.0")), "'4.0' is not a cluster of this run"),
        (_split(rejected=(6, "5.1")), "'5.1': new-3 is not split, so it has no part 1"),
        # the assignment must give each image of the cluster exactly one part, none empty
        (_split(part_of={"11": 1}), "each of its 2 images one part (1 have none, 0 are not in"),
        (_split(part_of={"11": 1, "15": 2, "10": 1}), "(0 have none, 1 are not in new-2)"),
        (_split(parts=3, rejected=(6, "4.3")), "new-2.3: no images; split into fewer"),
        (_split(parts=1), "a split needs 'parts' (2 or more)"),
        (_split(key="9"), "'splits' names '9', not a cluster of this run"),
        ({**SPLIT, "splits": [4]}, "'splits' must be an object"),
    ],
)
def test_bad_splits_are_named(labels, message):
    errors = validate_labels(labels, DISCOVERED, KNOWN)
    assert any(message in e for e in errors), errors


def test_the_parts_of_a_split_cluster_become_classes():
    assert class_of_cluster(SPLIT, 3) == {3: 3, "4.1": 4, 5: 4, "4.2": 5, 6: None}
    out = apply_labels(DISCOVERED, SPLIT)
    assert out["num_novel"] == 3 and out["class_names"] == ["seven", "five", "nine"]
    # image 11 (part 1 of cluster 4) is "five" with cluster 5's 13 and 16; 15 (part 2) "nine"
    assert out["index"] == [10, 11, 12, 13, 15, 16]
    assert out["label"] == [3, 4, 3, 4, 5, 4]
    assert out["splits"] == {"4": 2}
    # cluster 4's match (true class 5) goes to its largest part (equal sizes: part 1)
    assert out["covers"] == {"3": [7], "4": [5, 8], "5": []}
    assert inverse_mapping(out) == {7: 3, 5: 4, 8: 4}
    # discover's own classifier cannot tell the parts apart: its output 4 is both names
    assert cluster_names(DISCOVERED, SPLIT) == ["seven", "five / nine", "five", "unknown"]
    words = describe_labels(SPLIT, 3)
    assert (
        "five (new-2.1 + new-3), nine (new-2.2)" in words and "Split: new-2 into 2 parts" in words
    )


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


def test_a_split_is_saved_and_read_back(folder):
    path = save_labels(folder, SPLIT, KNOWN)
    saved = json.loads(path.read_text())
    assert saved["classes"][1] == {"name": "five", "clusters": ["4.1", 5]}
    assert saved["splits"] == {"4": {"parts": 2, "part_of": {"11": 1, "15": 2}}}
    out = read_discovered(folder / "discovered.json", KNOWN)
    assert out["class_names"] == ["seven", "five", "nine"] and out["label"][4] == 5
    # a hand edit that moves an image out of the split is refused, not half applied
    saved["splits"]["4"]["part_of"] = {"11": 1, "15": 1}
    write_json(path, saved)
    with pytest.raises(UserError, match="new-2.2: no images"):
        read_discovered(folder / "discovered.json", KNOWN)


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
