"""The config reference, `docs/config.md`, generated from the config's pydantic models.

    .venv/bin/python -m uniframework.reference > docs/config.md

Every key of `data`, `model`, `trainer` and of each stage's options, at its default, with the
comments written beside the field in the code (the comment lines just above it and the one at
the end of its line) and, for a choice, its values. `tests/test_reference.py` checks that the
file equals what this prints, so the reference cannot drift from the code.
"""

from __future__ import annotations

import ast
import inspect
import io
import textwrap
import tokenize
import typing
from typing import Any, Literal

import yaml
from pydantic import BaseModel

from .config import Config, DataConfig, ModelConfig, TrainerConfig
from .registry import LOOP_ORDER

WIDTH = 100
COMMENT_AT = 28  # column of the comments (further right after a long key: value)

HEADER = """\
# Config reference

Generated from the code by `python -m uniframework.reference > docs/config.md`: do not edit.

A config is a YAML file with the keys below; every key is optional and shows its default.
Override any key on the command line as `key.sub=value` (read as YAML), stage options by stage
name (`stages.supervised.lr=0.01`) or position (`stages.0.lr=0.01`). An unknown key, a wrong
type or a value out of range stops the run with exit code 2 and a message naming the key.

The top of a config:

```yaml
name: run                   # the run directory's name (runs/<name>): letters, digits, . _ -
seed: 0                     # seeds everything, the open-world split included
stages:                     # the stages to run, in order; each {stage name: options}
  - supervised: {}
```
"""


def field_comments(model: type[BaseModel]) -> dict[str, tuple[str, str]]:
    """{field name: (heading, comment)} from the class source of `model` and its bases: the
    comment lines just above a field and the one at the end of its line; a comment block after a
    blank line is a heading over the fields that follow."""
    out: dict[str, tuple[str, str]] = {}
    for cls in reversed(model.__mro__):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls is BaseModel:
            continue
        try:
            source = textwrap.dedent(inspect.getsource(cls))
        except (OSError, TypeError):
            continue
        comments: dict[int, str] = {}  # line -> comment text
        code: set[int] = set()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
            elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
                code.add(tok.start[0])
        fields = []  # [name, comment lines above, comments on its lines, the line above those]
        for node in ast.parse(source).body[0].body:  # the class statement's body
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                above, line = [], node.lineno - 1
                while line in comments and line not in code:  # whole-line comments
                    above.insert(0, comments[line])
                    line -= 1
                lines = range(node.lineno, node.end_lineno + 1)
                on = [comments[n] for n in lines if n in comments]
                fields.append((node.target.id, above, on, line))
        for i, (name, above, on, line) in enumerate(fields):
            heading = ""
            if above and line not in code:  # after a blank line: a heading
                heading, above = " ".join(above), []
            elif above and on and i and fields[i - 1][2] and line in comments:
                # `a: int = 1  # text that goes on` / `# on this line` / `b: int = 2  # own`
                fields[i - 1][2].extend(above)
                above = []
            fields[i] = (name, above, on, line, heading)
        for name, above, on, _, heading in fields:
            out[name] = (heading, " ".join(above + on))
    return out


def choices(annotation: Any) -> list[str]:
    """The values of the `Literal`s in a field's type (`str | Literal["a", "b"]` too)."""
    if typing.get_origin(annotation) is Literal:
        return [str(v) for v in typing.get_args(annotation)]
    return [c for arg in typing.get_args(annotation) for c in choices(arg)]


def _value(v: Any) -> str:
    if isinstance(v, BaseModel):
        v = v.model_dump(mode="json")
    return (
        yaml.safe_dump(v, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
    )


def _lines(key: str, value: str, comment: str, indent: int) -> list[str]:
    """`key: value  # comment`, the comment wrapped at WIDTH under its own column."""
    head = f"{' ' * indent}{key}: {value}"
    if not comment:
        return [head]
    col = max(COMMENT_AT, len(head) + 1)
    if col > WIDTH - 30:  # a long value: the comment goes on the lines above
        wrapped = textwrap.wrap(comment, WIDTH - indent - 2)
        return [f"{' ' * indent}# {w}" for w in wrapped] + [head]
    wrapped = textwrap.wrap(comment, WIDTH - col - 2)
    out = [head.ljust(col) + "# " + wrapped[0]]
    out += [" " * col + "# " + w for w in wrapped[1:]]
    return out


def model_block(model: type[BaseModel], indent: int) -> list[str]:
    """Every field of `model` at its default, one `key: value  # comment` each."""
    notes = field_comments(model)
    defaults = model().model_dump(mode="json")
    out = []
    for name, field in model.model_fields.items():
        heading, comment = notes.get(name, ("", ""))
        if heading:
            out += ["", f"{' ' * indent}# {heading}"]
        values = choices(field.annotation)
        if values and not all(v in comment for v in values):
            comment = " | ".join(values) + (f"; {comment}" if comment else "")
        out += _lines(name, _value(defaults[name]), comment, indent)
    return out


def _doc(model: type) -> str:
    return " ".join(inspect.cleandoc(model.__doc__ or "").split("\n\n")[0].split())


def stage_options() -> dict[str, type[BaseModel]]:
    """{stage name: options model}, in loop order (stages not in `LOOP_ORDER` last)."""
    from .config import _stage_registry

    stages = dict(_stage_registry().items())
    names = [n for n in LOOP_ORDER if n in stages] + sorted(set(stages) - set(LOOP_ORDER))
    return {name: stages[name].Options for name in names}


def _fence(block: str) -> str:
    return f"```yaml\n{block}\n```\n"


def reference() -> str:
    """The text of `docs/config.md`."""
    parts = [HEADER]
    for key, model in (("data", DataConfig), ("model", ModelConfig), ("trainer", TrainerConfig)):
        assert Config.model_fields[key].annotation is model
        intro = _doc(model)
        block = "\n".join([f"{key}:", *model_block(model, 2)])
        parts.append(f"## `{key}`\n\n" + (f"{intro}\n\n" if intro else "") + _fence(block))
    for name, options in stage_options().items():
        intro = _doc(options)
        block = "\n".join(["stages:", f"  - {name}:", *model_block(options, 6)])
        parts.append(f"## `stages`: {name}\n\n" + (f"{intro}\n\n" if intro else "") + _fence(block))
    return "\n".join(parts)


if __name__ == "__main__":
    print(reference(), end="")
