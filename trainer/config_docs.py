"""The configuration reference, generated from the schemas: `python -m trainer.config_docs > docs/config.md`.

Walks the pydantic models of a job (`trainer.config.JobConfig`) and of a sweep
(`trainer.sweep.SweepConfig`) through their public API (`model_fields`; each
`FieldInfo`'s annotation, default or default_factory, constraints in `metadata`,
description) and renders one Markdown table per section: key (dotted path),
type, default, meaning.

- A field whose type is a model, or a model or null, is a section: a table of its own
  (an optional one says so). A model met again is referred to its first table.
- A field whose type is a union of models (`trainer.config.section_by_key`: realign's `task` is a
  benchmark's or task files') gets one table per member, under the same key.
- A model inside another type (`list[str | HubSource]`, `dict[str, Axis]`) gets a table
  too, keyed `parallel.hub[]` or `search.<key>`.
- Literal types list their allowed values; constraints (`> 0`, ...) follow the type.

`tests/test_config_docs.py` checks that docs/config.md is this module's output and that
every option has a description.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
import types
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

COMMAND = "python -m trainer.config_docs > docs/config.md"


@dataclass
class Row:
    key: str
    type: str
    default: str
    description: str


@dataclass
class Table:
    path: str                      # dotted key of the section ("" = the top level)
    model: type[BaseModel]
    intro: list[str] = field(default_factory=list)   # paragraphs above the table
    rows: list[Row] = field(default_factory=list)
    same_as: str | None = None     # this model was already documented under that path


# --- types, defaults, constraints -------------------------------------------------------------

def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def section_model(annotation: Any) -> tuple[type[BaseModel], bool] | None:
    """`Model` or `Model | None` -> (Model, optional); anything else -> None."""
    if _is_model(annotation):
        return annotation, False
    if _is_union(annotation):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1 and _is_model(args[0]):
            return args[0], True
    return None


def union_sections(annotation: Any) -> list[type[BaseModel]]:
    """The members of a union of two or more models (each maybe `Annotated` with a pydantic `Tag`); else []."""
    if not _is_union(annotation):
        return []
    members = [get_args(a)[0] if get_origin(a) is Annotated else a for a in get_args(annotation)]
    return members if len(members) > 1 and all(_is_model(m) for m in members) else []


def nested_models(annotation: Any, suffix: str = "") -> list[tuple[str, type[BaseModel]]]:
    """Models inside a non-section type, with the key suffix of their entries (`[]`, `.<key>`)."""
    if _is_model(annotation):
        return [(suffix, annotation)]
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (list, set, frozenset, tuple):
        return [m for a in args if a is not Ellipsis for m in nested_models(a, suffix + "[]")]
    if origin is dict and len(args) == 2:
        return nested_models(args[1], suffix + ".<key>")
    if _is_union(annotation):
        return [m for a in args for m in nested_models(a, suffix)]
    return []


def type_name(annotation: Any) -> str:
    """A readable type: `int | null`, `"lora" | "full"`, `list[str]`, `dict[str, Axis]`."""
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if _is_union(annotation):
        parts = [type_name(a) for a in args if a is not type(None)]
        return " | ".join(parts + (["null"] if type(None) in args else []))
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation)


_BOUNDS = ((annotated_types.Gt, "gt", ">"), (annotated_types.Ge, "ge", ">="),
           (annotated_types.Lt, "lt", "<"), (annotated_types.Le, "le", "<="))


def constraints(info: FieldInfo) -> list[str]:
    """The field's validation constraints as short texts (`> 0`, `min length 1`, ...)."""
    out = []
    for meta in info.metadata:
        for cls, attr, op in _BOUNDS:
            if isinstance(meta, cls):
                out.append(f"{op} {_value(getattr(meta, attr))}")
                break
        else:
            if isinstance(meta, annotated_types.MinLen):
                out.append(f"min length {meta.min_length}")
            elif isinstance(meta, annotated_types.MaxLen):
                out.append(f"max length {meta.max_length}")
            elif isinstance(meta, annotated_types.MultipleOf):
                out.append(f"multiple of {_value(meta.multiple_of)}")
            elif getattr(meta, "pattern", None) is not None:
                out.append(f"matches `{meta.pattern}`")
            else:
                out.append(str(meta))
    return out


def _value(value: Any) -> str:
    """A value as YAML would show it: strings bare, None as null, tuples as lists."""
    if isinstance(value, str):
        return value
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return json.dumps(value, default=lambda v: list(v) if isinstance(v, (tuple, set)) else str(v))


def default_text(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value = info.default_factory() if info.default_factory is not None else info.default
    if value == "":
        return '`""`'
    return f"`{_value(value)}`"


# --- walking the schema -----------------------------------------------------------------------

def _doc(model: type[BaseModel]) -> str:
    """The model's own docstring (`__doc__` is not inherited, unlike `inspect.getdoc`)."""
    return inspect.cleandoc(model.__doc__) if model.__doc__ else ""


def schemas(model: Any) -> list[type[BaseModel]]:
    """A model -> [model]; a union of models (`trainer.config.JobConfig`, one schema per recipe) -> its members."""
    if _is_model(model):
        return [model]
    if get_origin(model) is Annotated:
        model = get_args(model)[0]
    return [m for m in get_args(model) if _is_model(m)]


def walk(model: type[BaseModel], path: str = "", intro: list[str] | None = None,
         seen: dict[type[BaseModel], str] | None = None, skip: frozenset[str] = frozenset()) -> list[Table]:
    """The tables of `model` (at key `path`) and of every model below it, depth first.

    `skip`: top-level fields left out (a recipe's schema without the keys every recipe shares).
    """
    seen = {} if seen is None else seen
    seen.setdefault(model, path)
    table = Table(path, model, intro=[p for p in [*(intro or []), _doc(model)] if p])
    subs: list[tuple[str, type[BaseModel], list[str]]] = []
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        key = f"{path}.{name}" if path else name
        description = info.description or ""
        members = union_sections(info.annotation)
        if members:
            names = " or ".join(f"`{m.__name__}`" for m in members)
            subs += [(key, sub, [p for p in [description, f"One of {names}: this table is `{sub.__name__}`."] if p])
                     for sub in members]
            continue
        section = section_model(info.annotation)
        if section is not None:
            sub, optional = section
            note = ["Optional section: absent (`null`) unless given."] if optional and info.default is None else []
            subs.append((key, sub, [p for p in [description, *note] if p]))
            continue
        kind = type_name(info.annotation)
        limits = constraints(info)
        table.rows.append(Row(key, f"`{kind}`" + (", " + ", ".join(limits) if limits else ""),
                              default_text(info), description))
        for suffix, sub in nested_models(info.annotation):
            where = "Each entry of" if suffix.endswith("[]") else "Each value of"
            subs.append((key + suffix, sub, [f"{where} `{key}` given as a mapping (`{sub.__name__}`)."]))
    tables = [table]
    for key, sub, sub_intro in subs:
        if sub in seen:
            tables.append(Table(key, sub, intro=sub_intro, same_as=seen[sub]))
        else:
            tables.extend(walk(sub, key, sub_intro, seen))
    return tables


def undocumented(model: Any, leaves_only: bool = True) -> list[str]:
    """Dotted keys of fields without a description (leaf options, or every field); a union: of every member."""
    missing = []
    seen: dict[type[BaseModel], str] = {}
    for table in [t for schema in schemas(model) for t in walk(schema, seen=seen)]:
        if table.same_as is not None:
            continue
        for row in table.rows:
            if not row.description.strip():
                missing.append(row.key)
        if not leaves_only:
            for name, info in table.model.model_fields.items():
                key = f"{table.path}.{name}" if table.path else name
                if section_model(info.annotation) is not None and not (info.description or "").strip():
                    missing.append(key)
    return missing


# --- Markdown ---------------------------------------------------------------------------------

def _cell(text: str) -> str:
    """One table cell: one line, `|` escaped, `<` escaped outside code spans (not an HTML tag)."""
    text = " ".join(text.split())
    parts = text.split("`")
    parts = [p if i % 2 else p.replace("<", "\\<") for i, p in enumerate(parts)]
    return "`".join(parts).replace("|", "\\|")


def _paragraph(text: str) -> str:
    parts = text.split("`")
    return "`".join(p if i % 2 else re.sub(r"<(?=[A-Za-z])", "\\<", p) for i, p in enumerate(parts))


def render_tables(tables: list[Table], top_title: str) -> list[str]:
    """One `###` block per table (heading, intro paragraphs, table), each preceded by a blank line."""
    lines: list[str] = []
    for table in tables:
        blocks = [f"### `{table.path}`" if table.path else f"### {top_title}"]
        blocks += [_paragraph(p) for p in table.intro]
        if table.same_as is not None:
            blocks.append(f"The same keys as `{table.same_as}` (`{table.model.__name__}`, above), "
                          f"under `{table.path}.`.")
        elif table.rows:
            blocks.append("\n".join(["| key | type | default | meaning |", "|---|---|---|---|"] + [
                f"| `{r.key}` | {_cell(r.type)} | {_cell(r.default)} | {_cell(r.description)} |"
                for r in table.rows]))
        lines += ["", "\n\n".join(blocks)]
    return lines


HEADER = f"""<!-- Generated by `{COMMAND}` from the schemas in trainer/config.py,
     trainer/data/parallel.py, trainer/data/stream.py and trainer/sweep.py. Do not edit: change the Field descriptions
     and regenerate (tests/test_config_docs.py fails while this file is stale). -->

# Configuration reference

A **job** is one YAML file validated by `trainer.config.JobConfig` (`python -m trainer.train JOB.yaml`):
the schema of its `recipe` (`Stage1Job`, `AlignJob`, `RealignJob`), which share the top-level keys
below and add their own sections;
a **sweep** is one YAML file validated by `trainer.sweep.SweepConfig` (`python -m trainer.tune SWEEP.yaml`).
Unknown keys, wrong types and impossible values fail before anything loads, naming the key path and
what is allowed. Any key can be overridden on the command line as `key.path=value`, the value parsed
as YAML (`model.lora.r=8`, `"parallel.languages=[deu_Latn,ell_Grek]"`).

`null` is YAML's null (Python `None`). An optional section is absent unless the file gives it; the
other sections exist with the defaults below. Language codes may be given in any form the language
table knows (`de`, `deu`, `deu_Latn`) and are stored as FLORES-200 codes (docs/languages.md)."""


def render() -> str:
    from trainer.config import RECIPE_SCHEMAS, JobBase
    from trainer.sweep import SweepConfig

    lines = [HEADER, "", "## Job files (`trainer.config.JobConfig`)"]
    seen: dict[type[BaseModel], str] = {}
    lines += render_tables(walk(JobBase, seen=seen), "Top level: the keys every recipe shares (`JobBase`)")
    shared = frozenset(JobBase.model_fields)
    for name, schema in RECIPE_SCHEMAS.items():
        lines += ["", f"## Recipe `{name}` (`trainer.config.{schema.__name__}`)", "", _paragraph(_doc(schema))]
        own, *sections = walk(schema, seen=seen, skip=shared)
        own.intro = []   # the schema's docstring is the paragraph above
        lines += render_tables([own, *sections] if own.rows else sections, f"Top level: the keys of recipe `{name}`")
    lines += ["", "## Sweep files (`trainer.sweep.SweepConfig`)", "",
              "A sweep names a base job and searches over its keys; see docs/sweeps.md."]
    lines += render_tables(walk(SweepConfig), "Top level of a sweep")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    if argv if argv is not None else sys.argv[1:]:
        print(f"usage: {COMMAND}", file=sys.stderr)
        return 2
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
