"""docs/config.md: generated from the config's models, current, and a valid config itself."""

from __future__ import annotations

from pathlib import Path

import yaml

from uniframework.config import Config
from uniframework.reference import choices, field_comments, reference, stage_options

DOCS = Path(__file__).resolve().parent.parent / "docs" / "config.md"


def test_the_reference_in_docs_is_the_generated_one():
    assert DOCS.read_text() == reference(), (
        "docs/config.md is out of date: .venv/bin/python -m uniframework.reference > docs/config.md"
    )


def test_the_reference_is_a_config_with_every_key_at_its_default():
    text = reference()
    blocks = [b.split("```")[0] for b in text.split("```yaml\n")[1:]]
    tree: dict = {"stages": []}
    for block in blocks[1:]:  # the first one is the top of a config (an example)
        part = yaml.safe_load(block)
        if "stages" in part:
            tree["stages"] += part["stages"]
        else:
            tree.update(part)
    cfg = Config.model_validate(tree)
    defaults = Config().model_dump(mode="json")
    for section in ("data", "model", "trainer"):
        assert tree[section] == defaults[section], section
    stages = dict(cfg.stage_list())
    assert list(stages) == list(stage_options())  # every stage, in loop order
    for name, opts in stages.items():
        assert opts == type(opts)(), name  # every key at its default...
        listed = next(entry[name] for entry in tree["stages"] if name in entry)
        assert set(listed) == set(type(opts).model_fields), name  # ...and every one listed


def test_comments_beside_a_field_become_its_description():
    from pydantic import BaseModel

    class Options(BaseModel):
        a: int = 1  # first, and it goes on
        # on the next line
        b: int = 2  # its own

        # a heading
        c: str = "x"
        # said above
        d: int = 4

    notes = field_comments(Options)
    assert notes["a"] == ("", "first, and it goes on on the next line")
    assert notes["b"] == ("", "its own")
    assert notes["c"] == ("a heading", "")
    assert notes["d"] == ("", "said above")


def test_choices_of_a_literal_field():
    from typing import Literal

    assert choices(Literal["a", "b"]) == ["a", "b"]
    assert choices(str | Literal["openset"] | None) == ["openset"]
    assert choices(int) == []
