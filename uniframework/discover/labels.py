"""A person's names for the discovered clusters: `discover/labels.json`, written by the label
page (`uniframework label RUN_DIR`, `uniframework/label.py`) and read by `incremental`.

The file names every cluster of `discover/discovered.json` (its model labels k..k+n-1) once,
or, for a cluster split into parts, every part once:

    {"classes": [{"name": "seven", "clusters": [5, 7]}, {"name": "five", "clusters": ["6.1"]},
                 {"name": "nine", "clusters": ["6.2"]}],
     "rejected": [8],
     "splits": {"6": {"parts": 2, "part_of": {"<train index>": 1, "<train index>": 2, ...}}},
     "num_known": 5, "discovered_sha256": "<sha256 of the discovered.json it names>"}

Clusters listed together are merged into one class; rejected ones are noise, left out. Class j
of the list becomes model label k + j of the incremental classifier. A file written for another
discover result (its `discovered_sha256` differs) is refused, never applied to new clusters.

A cluster the count lumped together is split on the label page: `splits` (optional) gives, per
split cluster c, its part count P >= 2 and the part (1..P) of each of its images, keyed by the
image's train-set index (discovered.json's `index`); every image of the cluster gets exactly
one part and no part is empty. The assignment itself is stored (the page's k-means only
proposed it), so the split reads back the same whatever the features or library version.
Part p of cluster c is referred to as the string "c.p" (called `new-<j + 1>.p`) in `classes`
and `rejected`, and is named, merged or rejected like a cluster; the split cluster itself
(the number c) may no longer appear there.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
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


Ref = tuple[int, int]  # (cluster, part) of a class's entry; part 0 = the whole cluster


def part_name(ref: Ref, k: int) -> str:
    """`new-<j + 1>` for a whole cluster, `new-<j + 1>.p` for part p of a split one."""
    c, p = ref
    return cluster_name(c, k) + (f".{p}" if p else "")


def parse_ref(ref: Any) -> Ref | None:
    """(cluster, part) of an entry of `classes[].clusters` or `rejected`: the number c is
    cluster c (part 0), the string "c.p" part p of split cluster c; None for anything else."""
    if _is_int(ref):
        return ref, 0
    if isinstance(ref, str) and re.fullmatch(r"\d+\.[1-9]\d*", ref):
        c, p = ref.split(".")
        return int(c), int(p)
    return None


def split_parts(labels: dict) -> dict[int, int]:
    """Split cluster -> its part count, for the well-formed entries of `labels["splits"]`."""
    splits = labels.get("splits") or {}
    if not isinstance(splits, dict):
        return {}
    return {
        int(c): s["parts"]
        for c, s in splits.items()
        if _cluster_key(c) is not None
        and isinstance(s, dict)
        and _is_int(s.get("parts"))
        and s["parts"] >= 2
    }


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _cluster_key(c: Any) -> int | None:
    """The cluster a key of `splits` names ("7" -> 7), None when it is no plain number."""
    return int(c) if isinstance(c, str) and c.isdigit() and str(int(c)) == c else None


def _key(name: str) -> str:
    """Names compare without case and surrounding / repeated spaces."""
    return " ".join(name.split()).casefold()


def validate_labels(
    labels: Any, discovered: dict, known: list[str], min_classes: int = 1
) -> list[str]:
    """Every problem of `labels` (the file's `classes` / `rejected` / `splits`) for the clusters
    of `discovered`: a missing, repeated or foreign cluster or part, a split cluster named
    itself, a split that leaves an image without a part or a part without images, an empty
    name, a name used twice, a known class's name (`known`), fewer than `min_classes`
    classes. [] when it can be saved."""
    k, n = int(discovered["num_known"]), int(discovered["num_novel"])
    if not isinstance(labels, dict):
        return ["the labels must be a JSON object with 'classes' and 'rejected'"]
    classes, rejected = labels.get("classes", []), labels.get("rejected", [])
    if not isinstance(classes, list) or not isinstance(rejected, list):
        return ["'classes' and 'rejected' must be lists"]
    if not all(isinstance(c, dict) for c in classes):
        return ["each entry of 'classes' must be an object with 'name' and 'clusters'"]
    errors = _split_errors(labels.get("splits", {}), discovered)
    parts = {c: p for c, p in split_parts(labels).items() if k <= c < k + n}
    place: dict[Ref, int] = {}  # cluster or part -> how often it was placed
    for x in [*(x for cl in classes for x in _clusters(cl, errors)), *rejected]:
        problem = _ref_problem(x, k, n, parts)
        if problem:
            errors.append(problem)
        else:
            place[parse_ref(x)] = place.get(parse_ref(x), 0) + 1
    twice = sorted(c for c, times in place.items() if times > 1)
    if twice:
        errors.append(f"{_names(twice, k)} placed more than once (a cluster joins one class)")
    units = {(c, 0) for c in range(k, k + n) if c not in parts}
    units |= {(c, p) for c, size in parts.items() for p in range(1, size + 1)}
    missing = sorted(units - set(place))
    if missing:
        errors.append(f"{_names(missing, k)} neither named nor rejected: name or reject each")
    known_keys = {_key(name) for name in known}
    first: dict[str, str] = {}  # name key -> the clusters that first used it
    for cl in classes:
        refs = sorted(r for r in map(parse_ref, _clusters(cl, [])) if r is not None)
        where = _names(refs, k) or "?"
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


def _ref_problem(ref: Any, k: int, n: int, parts: dict[int, int]) -> str | None:
    """What is wrong with one entry of `classes[].clusters` / `rejected`; None when fine."""
    parsed = parse_ref(ref)
    if parsed is None or not k <= parsed[0] < k + n:
        hint = "; part p of a split cluster c is the string 'c.p'" * isinstance(ref, str)
        return f"{ref!r} is not a cluster of this run (they are {k}..{k + n - 1}{hint})"
    c, p = parsed
    me = cluster_name(c, k)
    if p == 0 and c in parts:
        every = _names([(c, q) for q in range(1, parts[c] + 1)], k)
        return f"{me} is split: name or reject each of its parts ({every}), not {me} itself"
    if p and c not in parts:
        return f"{ref!r}: {me} is not split, so it has no part {p}"
    if p > parts.get(c, 0):
        return f"{ref!r}: {me} is split into {parts[c]} parts, so it has no part {p}"
    return None


def _split_errors(splits: Any, discovered: dict) -> list[str]:
    """Problems of `splits`: a foreign cluster, a part count under 2, an image of the cluster
    without a part (or one not in it), a part out of range or without images."""
    k, n = int(discovered["num_known"]), int(discovered["num_novel"])
    if not isinstance(splits, dict):
        return ["'splits' must be an object: cluster -> {'parts': P, 'part_of': {...}}"]
    members = _members(discovered)
    errors: list[str] = []
    for key, split in splits.items():
        c = _cluster_key(key)
        if c is None or not k <= c < k + n:
            errors.append(f"'splits' names {key!r}, not a cluster of this run ({k}..{k + n - 1})")
            continue
        me = cluster_name(c, k)
        parts = split.get("parts") if isinstance(split, dict) else None
        part_of = split.get("part_of") if isinstance(split, dict) else None
        if not _is_int(parts) or parts < 2 or not isinstance(part_of, dict):
            errors.append(
                f"{me}: a split needs 'parts' (2 or more) and 'part_of' (train index -> part)"
            )
            continue
        own = {str(i) for i in members.get(c, [])}
        if set(part_of) != own:
            errors.append(
                f"{me}: the split must give each of its {len(own)} images one part "
                f"({len(own - set(part_of))} have none, {len(set(part_of) - own)} are not "
                f"in {me}); split it again on the label page"
            )
        bad = [p for p in part_of.values() if not _is_int(p) or not 1 <= p <= parts]
        if bad:
            errors.append(f"{me}: part {bad[0]!r} is out of range (it is split into 1..{parts})")
            continue
        empty = sorted(set(range(1, parts + 1)) - set(part_of.values()))
        if empty:
            errors.append(f"{_names([(c, p) for p in empty], k)}: no images; split into fewer")
    return errors


def _members(discovered: dict) -> dict[int, list[int]]:
    """Cluster -> the train indices of its images, in discovered.json's order."""
    out: dict[int, list[int]] = {}
    for i, c in zip(discovered["index"], discovered["label"], strict=True):
        out.setdefault(int(c), []).append(int(i))
    return out


def _clusters(cl: dict, errors: list[str]) -> list:
    clusters = cl.get("clusters")
    if not isinstance(clusters, list) or not clusters:
        errors.append(f"class '{cl.get('name')}' has no 'clusters' list")
        return []
    return clusters


def _names(refs: list[Ref], k: int) -> str:
    return ", ".join(part_name(r, k) for r in refs)


def class_of_cluster(labels: dict, k: int) -> dict[int | str, int | None]:
    """Cluster or part (as written in the file: c, or "c.p") -> the incremental model label it
    becomes: k + the position of its class in `labels["classes"]`; None when rejected."""
    out: dict[int | str, int | None] = {c: None for c in labels.get("rejected", [])}
    for j, cl in enumerate(labels["classes"]):
        out.update({c: k + j for c in cl["clusters"]})
    return out


def apply_labels(discovered: dict, labels: dict) -> dict:
    """`discovered` (discovered.json) restated over the named classes: `num_novel` = their
    count; pool images of rejected clusters or parts dropped, the others' `label` the model
    label of their class (an image of a split cluster: its part's class); `class_names` the
    given names; `covers` = each class's true classes (the Hungarian matches of its clusters;
    a split cluster's match goes to its largest part only, the first of equals), used to score
    it, `mapping` = the first of them or None; `clusters` = each class's clusters and parts;
    `splits` = split cluster -> its part count."""
    k = int(discovered["num_known"])
    to = class_of_cluster(labels, k)
    part_of = {int(c): s["part_of"] for c, s in (labels.get("splits") or {}).items()}
    index, label = [], []
    for i, c in zip(discovered["index"], discovered["label"], strict=True):
        c = int(c)
        ref = f"{c}.{part_of[c][str(i)]}" if c in part_of else c
        if to[ref] is not None:
            index.append(i)
            label.append(to[ref])
    largest = {c: _largest_part(parts) for c, parts in part_of.items()}
    matched = discovered["mapping"]

    def match(ref: int | str) -> int | None:  # the true class a cluster or part is scored on
        c, p = parse_ref(ref)
        return matched.get(str(c)) if p == largest.get(c, 0) else None

    covers = {
        str(k + j): [match(c) for c in cl["clusters"] if match(c) is not None]
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
        "splits": {str(c): n for c, n in split_parts(labels).items()},
    }


def _largest_part(part_of: dict[str, int]) -> int:
    sizes = Counter(part_of.values())
    return min(sizes, key=lambda p: (-sizes[p], p))


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
    (merged clusters share it; rejected ones are `unknown`; a split cluster, which discover's
    classifier cannot tell apart, its parts' names joined by " / "), else `new-<j + 1>`."""
    n, k = int(discovered["num_novel"]), int(discovered["num_known"])
    names = list(discovered.get("class_names") or [])
    names += [cluster_name(k + j, k) for j in range(len(names), n)]
    if labels is None:
        return names
    named = {parse_ref(c): cl["name"] for cl in labels["classes"] for c in cl["clusters"]}
    parts = split_parts(labels)
    out = []
    for c in range(k, k + n):
        refs = [(c, p) for p in range(1, parts[c] + 1)] if c in parts else [(c, 0)]
        each = (" ".join(named[r].split()) if r in named else REJECTED_NAME for r in refs)
        out.append(" / ".join(dict.fromkeys(each)))
    return out


def describe_labels(labels: dict, k: int) -> str:
    """The labels in words, for the report."""
    parts = [
        f"{cl['name']} ({' + '.join(part_name(parse_ref(c), k) for c in cl['clusters'])})"
        for cl in labels["classes"]
    ]
    text = f"Named on the label page ({LABELS}): {len(parts)} classes: {', '.join(parts)}."
    if labels.get("rejected"):
        text += f" Rejected as noise: {_names([parse_ref(c) for c in labels['rejected']], k)}."
    splits = sorted(split_parts(labels).items())
    if splits:
        text += " Split: " + ", ".join(f"{cluster_name(c, k)} into {p} parts" for c, p in splits)
        text += "."
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
    """Validate `labels` ({classes, rejected, splits}) against `folder/discovered.json` and write
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
            {
                "name": " ".join(cl["name"].split()),
                "clusters": sorted(cl["clusters"], key=parse_ref),
            }
            for cl in labels["classes"]
        ],
        "rejected": sorted(labels.get("rejected", []), key=parse_ref),
        "num_known": int(discovered["num_known"]),
        "discovered_sha256": sha256_of(folder / DISCOVERED),
    }
    if split_parts(labels):
        out["splits"] = {
            str(c): {"parts": p, "part_of": dict(labels["splits"][str(c)]["part_of"])}
            for c, p in sorted(split_parts(labels).items())
        }
    path = folder / LABELS
    write_json(path, out)
    return path
