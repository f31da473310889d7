"""A person's names for the discovered clusters: `discover/labels.json`, written by the label
page (`uniframework label RUN_DIR`, `uniframework/label.py`) and read by `incremental`.

The file names every cluster of `discover/discovered.json` (its model labels k..k+n-1) once:

    {"classes": [{"name": "seven", "clusters": [5, 7]}, {"name": "eight", "clusters": [6]}],
     "rejected": [8],
     "num_known": 5, "discovered_sha256": "<sha256 of the discovered.json it names>"}

Clusters listed together are merged into one class; rejected ones are noise, left out. Class j
of the list becomes model label k + j of the incremental classifier. A file written for another
discover result (its `discovered_sha256` differs) is refused, never applied to new clusters.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..io import read_json, write_json

LABELS = "labels.json"
DISCOVERED = "discovered.json"
REJECTED_NAME = "unknown"  # what a rejected cluster's output is called (predict's word)
MAX_NAME = 60


class LabelError(UserError):
    """Labels that cannot be saved or used; `errors` lists every problem, one sentence each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cluster_name(cluster: int, k: int) -> str:
    """How discover, the page and the messages call cluster `cluster` (model label k + j):
    `new-<j + 1>`; discover numbers its clusters by size, largest first. Never a true class:
    a person's own pool has none."""
    return f"new-{cluster - k + 1}"


def _key(name: str) -> str:
    """Names compare without case and surrounding / repeated spaces."""
    return " ".join(name.split()).casefold()


def validate_labels(
    labels: Any, discovered: dict, known: list[str], min_classes: int = 1
) -> list[str]:
    """Every problem of `labels` (the file's `classes` / `rejected`) for the clusters of
    `discovered`: a missing, repeated or foreign cluster, an empty name, a name used twice, a
    known class's name (`known`), fewer than `min_classes` classes. [] when it can be saved."""
    k, n = int(discovered["num_known"]), int(discovered["num_novel"])
    if not isinstance(labels, dict):
        return ["the labels must be a JSON object with 'classes' and 'rejected'"]
    classes, rejected = labels.get("classes", []), labels.get("rejected", [])
    if not isinstance(classes, list) or not isinstance(rejected, list):
        return ["'classes' and 'rejected' must be lists"]
    if not all(isinstance(c, dict) for c in classes):
        return ["each entry of 'classes' must be an object with 'name' and 'clusters'"]
    errors: list[str] = []
    place: dict[int, int] = {}  # cluster -> how often it was placed
    for c in [*(x for cl in classes for x in _clusters(cl, errors)), *rejected]:
        if not isinstance(c, int) or isinstance(c, bool) or not k <= c < k + n:
            errors.append(f"{c!r} is not a cluster of this run (they are {k}..{k + n - 1})")
        else:
            place[c] = place.get(c, 0) + 1
    twice = sorted(c for c, times in place.items() if times > 1)
    if twice:
        errors.append(f"{_names(twice, k)} placed more than once (a cluster joins one class)")
    missing = sorted(set(range(k, k + n)) - set(place))
    if missing:
        errors.append(f"{_names(missing, k)} neither named nor rejected: name or reject each")
    known_keys = {_key(name) for name in known}
    first: dict[str, str] = {}  # name key -> the clusters that first used it
    for cl in classes:
        where = _names(sorted(x for x in _clusters(cl, []) if isinstance(x, int)), k) or "?"
        name = cl.get("name")
        if not isinstance(name, str) or not name.strip():
            errors.append(f"{where}: the name is empty; type one, or reject the cluster")
            continue
        name = " ".join(name.split())
        if len(name) > MAX_NAME:
            errors.append(f"{where}: the name '{name[:20]}...' is over {MAX_NAME} characters")
        elif _key(name) in known_keys:
            errors.append(
                f"{where}: '{name}' is a known class; choose another name, or reject the "
                "cluster (new classes must differ from the known ones)"
            )
        elif _key(name) == REJECTED_NAME:
            errors.append(f"{where}: '{name}' is reserved for images of no class; reject instead")
        elif _key(name) in first:
            errors.append(
                f"{where}: '{name}' is already the name of {first[_key(name)]}; merge the two "
                "clusters if they are one class, or choose different names"
            )
        else:
            first[_key(name)] = where
    if not errors and len(classes) < min_classes:
        errors.append(
            f"{len(classes)} class(es) named, but this run's incremental stage needs at least "
            f"{min_classes} (one per incremental task); reject fewer clusters or merge fewer"
        )
    return errors


def _clusters(cl: dict, errors: list[str]) -> list:
    clusters = cl.get("clusters")
    if not isinstance(clusters, list) or not clusters:
        errors.append(f"class '{cl.get('name')}' has no 'clusters' list")
        return []
    return clusters


def _names(clusters: list[int], k: int) -> str:
    return ", ".join(cluster_name(c, k) for c in clusters)


def class_of_cluster(labels: dict, k: int) -> dict[int, int | None]:
    """Cluster (discover's model label) -> the incremental model label it becomes: k + the
    position of its class in `labels["classes"]`; None when rejected."""
    out: dict[int, int | None] = {c: None for c in labels.get("rejected", [])}
    for j, cl in enumerate(labels["classes"]):
        out.update({c: k + j for c in cl["clusters"]})
    return out


def apply_labels(discovered: dict, labels: dict) -> dict:
    """`discovered` (discovered.json) restated over the named classes: `num_novel` = their
    count; pool images of rejected clusters dropped, the others' `label` the class's model
    label; `class_names` the given names; `covers` = each class's true classes (the Hungarian
    matches of its clusters, used to score it), `mapping` = the first of them or None;
    `clusters` = each class's clusters."""
    k = int(discovered["num_known"])
    to = class_of_cluster(labels, k)
    index, label = [], []
    for i, c in zip(discovered["index"], discovered["label"], strict=True):
        if to[int(c)] is not None:
            index.append(i)
            label.append(to[int(c)])
    matched = discovered["mapping"]
    covers = {
        str(k + j): [matched[str(c)] for c in cl["clusters"] if matched.get(str(c)) is not None]
        for j, cl in enumerate(labels["classes"])
    }
    return {
        **discovered,
        "num_novel": len(labels["classes"]),
        "index": index,
        "label": label,
        "class_names": [" ".join(cl["name"].split()) for cl in labels["classes"]],
        "covers": covers,
        "mapping": {c: (t[0] if t else None) for c, t in covers.items()},
        "clusters": {str(k + j): list(cl["clusters"]) for j, cl in enumerate(labels["classes"])},
        "rejected": list(labels.get("rejected", [])),
    }


def output_truth(discovered: dict) -> dict[int, list[int]]:
    """Discovered model label -> the true classes a test image may have for the prediction to
    count as right (one Hungarian match; several for merged clusters; none if unmatched)."""
    if "covers" in discovered:
        return {int(c): [int(t) for t in ts] for c, ts in discovered["covers"].items()}
    return {int(c): [] if t is None else [int(t)] for c, t in discovered["mapping"].items()}


def inverse_mapping(discovered: dict) -> dict[int, int]:
    """True novel class -> the discovered model label its test images should get."""
    return {t: c for c, ts in output_truth(discovered).items() for t in ts}


def cluster_names(discovered: dict, labels: dict | None) -> list[str]:
    """Name of each cluster (discover's outputs k..k+n-1): its class's name on the label page
    (merged clusters share it; rejected ones are `unknown`), else discover's `new-<j + 1>`."""
    n, k = int(discovered["num_novel"]), int(discovered["num_known"])
    names = list(discovered.get("class_names") or [])
    names += [cluster_name(k + j, k) for j in range(len(names), n)]
    if labels is None:
        return names
    named = {c: cl["name"] for cl in labels["classes"] for c in cl["clusters"]}
    return [" ".join(named[k + j].split()) if k + j in named else REJECTED_NAME for j in range(n)]


def describe_labels(labels: dict, k: int) -> str:
    """The labels in words, for the report."""
    parts = [
        f"{cl['name']} ({' + '.join(cluster_name(c, k) for c in cl['clusters'])})"
        for cl in labels["classes"]
    ]
    text = f"Named on the label page ({LABELS}): {len(parts)} classes: {', '.join(parts)}."
    if labels.get("rejected"):
        text += f" Rejected as noise: {_names(labels['rejected'], k)}."
    return text


def read_labels(discovered_path: str | Path, known: list[str] | None = None) -> dict | None:
    """The `labels.json` beside `discovered_path` (the run's `discover/discovered.json`),
    checked against it; None without one. UserError when it names another discover result or
    breaks a rule of `validate_labels` (known class names checked when given)."""
    discovered_path = Path(discovered_path)
    path = discovered_path.parent / LABELS
    labels = read_json(path)
    if labels is None:
        return None
    discovered = read_json(discovered_path)
    if discovered is None:
        raise UserError(
            f"'{path}' names clusters, but '{discovered_path}' is missing: rerun the discover "
            "stage, then name its clusters again (uniframework label RUN_DIR)"
        )
    if labels.get("discovered_sha256") != sha256_of(discovered_path):
        raise UserError(
            f"'{path}' names the clusters of an earlier discover result, not those of "
            f"'{discovered_path}': name the new clusters (uniframework label RUN_DIR), or "
            "delete the labels file to use the clusters as found"
        )
    errors = validate_labels(labels, discovered, known or [])
    if errors:
        raise UserError(
            f"'{path}' cannot be used: {'; '.join(errors)}. Fix it on the label page "
            "(uniframework label RUN_DIR) or delete it"
        )
    return labels


def read_discovered(path: str | Path, known: list[str] | None = None) -> dict | None:
    """discovered.json at `path`, with the person's labels applied when `labels.json` lies
    beside it (`apply_labels`, plus `labels_sha256`); None without a discover result."""
    path = Path(path)
    discovered = read_json(path)
    if discovered is None:
        return None
    labels = read_labels(path, known)
    if labels is None:
        return discovered
    return {**apply_labels(discovered, labels), "labels_sha256": sha256_of(path.parent / LABELS)}


def save_labels(folder: str | Path, labels: dict, known: list[str], min_classes: int = 1) -> Path:
    """Validate `labels` ({classes, rejected}) against `folder/discovered.json` and write
    `folder/labels.json` atomically; LabelError (nothing written) listing every problem."""
    folder = Path(folder)
    discovered = read_json(folder / DISCOVERED)
    if discovered is None:
        raise LabelError([f"'{folder / DISCOVERED}' is missing: run the discover stage first"])
    errors = validate_labels(labels, discovered, known, min_classes)
    if errors:
        raise LabelError(errors)
    out = {
        "classes": [
            {"name": " ".join(cl["name"].split()), "clusters": sorted(cl["clusters"])}
            for cl in labels["classes"]
        ],
        "rejected": sorted(labels.get("rejected", [])),
        "num_known": int(discovered["num_known"]),
        "discovered_sha256": sha256_of(folder / DISCOVERED),
    }
    path = folder / LABELS
    write_json(path, out)
    return path
