"""The module boundaries of docs/architecture.md, read from the import graph (`ast`), as data.

Each rule: modules under `package` must not import anything under the listed prefixes (direct
imports, at any depth of the file: a function-level import counts too). Each external system
has one owner module, the only one that may import it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    # objectives are pure functions on tensors: nothing of the trainer
    "trainer.objectives": ["trainer"],
    # models are building blocks: no data, no training machinery, no losses
    "trainer.models": ["trainer.data", "trainer.engine", "trainer.objectives", "trainer.loop", "trainer.recipes",
                       "trainer.eval", "trainer.tracking", "trainer.checkpoint", "trainer.tune", "trainer.train"],
    # data takes tokenizers, never models; it trains and evaluates nothing; its sections sit beside it and the
    # job schema imports them, never the other way round
    "trainer.data": ["trainer.models", "trainer.engine", "trainer.objectives", "trainer.loop", "trainer.recipes",
                     "trainer.eval", "trainer.tracking", "trainer.checkpoint", "trainer.tune", "trainer.train",
                     "trainer.tiny", "trainer.config"],
    # the one base of every section: below the schema and every package that holds a section
    "trainer.schema_base": ["trainer.config", "trainer.data", "trainer.models", "trainer.engine", "trainer.objectives",
                            "trainer.loop", "trainer.recipes", "trainer.eval", "trainer.tiny", "trainer.tune",
                            "trainer.train", "trainer.sweep"],
    # language typology stands alone (the schema and data use it, not the other way round)
    "trainer.languages": ["trainer.data", "trainer.models", "trainer.engine", "trainer.objectives", "trainer.loop",
                          "trainer.recipes", "trainer.eval", "trainer.config", "trainer.tiny"],
    # tiny models and generated text: what tests and demos use instead of the hub
    "trainer.tiny": ["trainer.data", "trainer.models", "trainer.engine", "trainer.objectives", "trainer.loop",
                     "trainer.recipes", "trainer.eval", "trainer.config"],
    # evaluation components need a function that embeds or scores, not an engine, a tracker or a recipe
    "trainer.eval": ["trainer.engine", "trainer.tracking", "trainer.loop", "trainer.recipes", "trainer.data",
                     "trainer.objectives", "trainer.tune", "trainer.train"],
    # the loop and the recipes reach DeepSpeed, MLflow and Ray only through engine, tracking and tune
    "trainer.loop": ["trainer.recipes", "trainer.train", "trainer.tune"],
    "trainer.recipes": ["trainer.train", "trainer.tune", "trainer.tracking", "trainer.checkpoint"],
    # the report reads runs back through tracking; it trains nothing
    "trainer.report": ["trainer.engine", "trainer.loop", "trainer.recipes", "trainer.models", "trainer.data",
                       "trainer.train", "trainer.run", "trainer.tune"],
}

# trainer.upload reads Ray's own packaging rules to size a `ray job submit` upload before it is made
OWNERS = {"deepspeed": ["trainer.engine"], "mlflow": ["trainer.tracking"], "ray": ["trainer.tune", "trainer.upload"]}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports (absolute names; `from a import b` gives a and a.b)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(modules: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, imported in sorted(modules.items()):
        for package, forbidden in FORBIDDEN.items():
            if not under(module, package):
                continue
            for name in sorted(imported):
                hit = next((f for f in forbidden if under(name, f) and not under(name, package)), None)
                if hit:
                    bad.append(f"{module} imports {name} (rule: {package} must not import {hit})")
        for system, owners in OWNERS.items():
            if module not in owners and any(under(name, system) for name in imported):
                bad.append(f"{module} imports {system} (only {', '.join(owners)} may)")
    return bad


def trainer_modules() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted((ROOT / "trainer").rglob("*.py"))}


def test_module_boundaries_hold():
    bad = violations(trainer_modules())
    assert not bad, "forbidden imports (see docs/architecture.md):\n  " + "\n  ".join(bad)


@pytest.mark.parametrize("module, imported", [
    ("trainer.models.mt_llm", "trainer.objectives.distillation"),
    ("trainer.data.task", "trainer.objectives.task"),
    ("trainer.objectives.contrastive", "trainer.models.pooling"),
    ("trainer.recipes.stage1", "deepspeed"),
    ("trainer.eval.retrieval_by_layer", "trainer.engine"),
    ("trainer.report", "mlflow"),
    ("trainer.report", "trainer.tune"),
    ("trainer.data.text", "trainer.config"),
    ("trainer.schema_base", "trainer.data.parallel_config"),
])
def test_the_rules_catch_a_forbidden_import(module, imported):
    assert violations({module: {imported}}), f"{module} -> {imported} should be forbidden"
    assert not violations({module: set()})


def test_every_rule_names_an_existing_package():
    modules = trainer_modules()
    for package in FORBIDDEN:
        assert any(under(m, package) for m in modules), package
