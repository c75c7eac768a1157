"""The import floors of the README's "Architecture" section hold in the code: no module imports
from a floor above its own (within a floor, only from modules listed before it)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "rome_lib"

# The README's table, floor by floor, in order.
FLOORS = [
    ["errors", "paths"],
    ["hooks", "hparams", "estimate", "data", "real_models", "models", "tokens"],
    ["tracing", "plotting", "covariance", "edits", "deltas"],
    ["rome", "baselines", "memit"],
    ["methods", "evaluation", "zsre", "mass_editing", "sweep", "course", "bench"],
    ["widgets", "checks", "__main__"],
]
# Floors whose modules import rome_lib at the top of the file only: an import inside a function
# there would hide an import that breaks the picture. The command line, the checks and the widgets
# may import late (they start faster), and so may anything that builds the toy world.
TOP_LEVEL_ONLY = {name for floor in FLOORS[:5] for name in floor}
RANK = {name: (floor, i) for floor, names in enumerate(FLOORS) for i, name in enumerate(names)}


def _top(module: str) -> str:
    """The README's unit of a module: its first component (``checks.editing`` → ``checks``)."""
    return module.split(".")[0]


def _imports(path: Path, nested_only: bool = False) -> set[str]:
    """The rome_lib modules ``path`` imports (top level or inside functions; only inside functions
    with ``nested_only``), as units."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    package = list(parts[:-1]) if parts[-1] != "__init__" else list(parts[:-1])
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = set(tree.body) if nested_only else set()
    found = set()
    for node in ast.walk(tree):
        if node in top:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                names = base + ([node.module] if node.module else [])
                if names:
                    found.add(names[0].split(".")[0])
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
            if target in RANK and RANK[target] > RANK[unit]:
                upward.append(f"{rel} imports {target}")
    assert not upward, "Imports running up a floor: " + "; ".join(sorted(upward))


def test_toyworld_imports_only_the_ground():
    for path in (PACKAGE / "toyworld").rglob("*.py"):
        assert _imports(path) <= {"paths", "toyworld"}, path


def test_no_import_hides_in_a_function():
    hidden = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        unit = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if unit in TOP_LEVEL_ONLY:
            hidden += [f"{rel} imports {t} inside a function" for t in _imports(path, True) - {"toyworld"}]
    assert not hidden, "; ".join(sorted(hidden))


def test_every_module_is_listed_in_the_readme_and_the_package_docstring():
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    doc = (PACKAGE / "__init__.py").read_text(encoding="utf-8")
    units = [name for floor in FLOORS for name in floor] + ["toyworld"]
    for text, where in ((readme, "README"), (doc, "rome_lib/__init__.py")):
        missing = [u for u in units if f"`{u}" not in text]
        assert not missing, f"{where} does not list {missing}"
    for floor, names in enumerate(FLOORS):  # the README's Architecture table row of each floor
        row = next(line for line in readme.splitlines() if line.startswith(f"| {floor}, "))
        listed = [cell.strip("`/ ") for cell in row.split("|")[2].split(",")]
        assert [n.split(" ")[0].strip("`/") for n in listed] == names, f"README floor {floor}: {listed}"


def test_no_module_imports_a_private_name():
    private = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                private += [f"{path.relative_to(PACKAGE)} imports {a.name}" for a in node.names
                            if a.name.startswith("_") and not a.name.startswith("__")]
    assert not private, "; ".join(private)
