"""Auto-labelling unknowns in the pool: the selection's quality against a known truth, and the
rule calibrated on held-out knowns (it must hold when the pool mixes known and novel images)."""

import torch

from uniframework.openset.stage import auto_label_unknowns, auto_label_unlikely, selection_quality


def test_selection_quality_on_a_made_up_pool():
    is_novel = torch.tensor([True, True, True, True, False, False, False, False, False, False])
    picked = torch.tensor([0, 1, 4])  # 2 of the 3 picked are novel; 2 of the 4 novel picked
    assert selection_quality(picked, is_novel) == {
        "auto_unknown_precision": 2 / 3,
        "auto_unknown_recall": 2 / 4,
    }
    empty = selection_quality(torch.tensor([], dtype=torch.long), is_novel)
    assert empty["auto_unknown_recall"] == 0.0 and empty["auto_unknown_precision"] != 0.0  # NaN


def _logits(n, confident, seed):
    """[n, 5] logits: `confident` rows have one large logit (known-like), the rest are flat."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    if confident:
        x[torch.arange(n), torch.randint(0, 5, (n,), generator=g)] += 8.0
    return x


def test_the_known_calibrated_rule_holds_on_a_mixed_pool():
    known_val = _logits(200, True, 0)
    # a pool of 900 known-like and 100 novel-like images
    pool = torch.cat([_logits(900, True, 1), _logits(100, False, 2)])
    is_novel = torch.arange(1000) >= 900
    picked = auto_label_unlikely(pool, known_val, temperature=1.5, alpha=0.05)
    q = selection_quality(picked, is_novel)
    assert q["auto_unknown_recall"] > 0.95 and q["auto_unknown_precision"] > 0.6, q
    # the fixed-fraction rule picks 30% of the pool whatever it holds: most picks are known
    top = selection_quality(auto_label_unknowns(pool, 0.3, 1.5), is_novel)
    assert top["auto_unknown_precision"] < 0.4, top
