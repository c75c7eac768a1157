"""The import floors of the README's "Architecture" section hold in the code: no module imports
from a floor above its own (within a floor, only from modules listed before it)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "rome_lib"

# The README's table, floor by floor, in order.
FLOORS = [
    ["errors", "paths"],
    ["models", "hooks", "hparams", "estimate", "data", "real_models", "tokens", "plotting"],
    ["tracing", "covariance", "edits", "deltas"],
    ["rome", "baselines", "memit"],
    ["methods", "evaluation", "zsre", "mass_editing", "sweep", "course", "bench"],
    ["widgets", "checks", "__main__"],
]
# Imports that break the picture today, inside functions of modules being reworked elsewhere
# (the README names them); remove an entry when its import goes.
KNOWN_EXCEPTIONS = {("models", "real_models"), ("models", "tracing"), ("plotting", "tracing")}
RANK = {name: (floor, i) for floor, names in enumerate(FLOORS) for i, name in enumerate(names)}


def _top(module: str) -> str:
    """The README's unit of a module: its first component (``checks.editing`` → ``checks``)."""
    return module.split(".")[0]


def _imports(path: Path) -> set[str]:
    """The rome_lib modules ``path`` imports (top level or inside functions), as units."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    package = list(parts[:-1]) if parts[-1] != "__init__" else list(parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                names = base + ([node.module] if node.module else [])
                if names:
                    found.add(names[0])
                elif node.module is None:
                    found.update(a.name for a in node.names)
            elif (node.module or "").startswith("rome_lib."):
                found.add(node.module.split(".")[1])
    return found


def test_every_module_sits_on_a_floor():
    units = {p.stem if p.parent == PACKAGE else p.relative_to(PACKAGE).parts[0]
             for p in PACKAGE.rglob("*.py")} - {"__init__", "toyworld"}
    missing = sorted(u for u in units if u not in RANK)
    assert not missing, f"Place {missing} on a floor: the README's Architecture and FLOORS here."


def test_no_import_runs_up_a_floor():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        unit = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if unit not in RANK:
            continue
        for target in _imports(path) - {unit}:
            if target in RANK and RANK[target] > RANK[unit] and (unit, target) not in KNOWN_EXCEPTIONS:
                upward.append(f"{rel} imports {target}")
    assert not upward, "Imports running up a floor: " + "; ".join(sorted(upward))


def test_toyworld_imports_only_the_ground():
    for path in (PACKAGE / "toyworld").rglob("*.py"):
        assert _imports(path) <= {"paths", "toyworld"}, path
