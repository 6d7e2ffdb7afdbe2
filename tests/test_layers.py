"""Imports go one way (docs/architecture.md): every ``import ablate.…`` in the package, at the top
of a module or inside a function, checked against the layer rules."""

from __future__ import annotations

import ast
from pathlib import Path


PACKAGE = Path(__file__).resolve().parents[1] / "ablate"

# layer -> the other layers it may import; a layer not listed may import any layer but `cli`
ALLOWED = {
    "spec": set(),
    "store": {"spec"},
    "models": {"spec", "store"},
    "data": {"spec", "store"},
}
NEVER = {layer: {"launch", "report", "cli"} for layer in ("train", "evals", "generate")}
NEVER["evals"] |= {"train"}  # evals read what training wrote through generate (reward models)
NEVER["generate"] |= {"train", "evals"}  # inference sits below both


def layer_of(package: Path, path: Path) -> str:
    parts = path.relative_to(package).with_suffix("").parts
    return parts[0] if parts[0] != "__init__" else ""


def imported_layers(path: Path) -> dict[str, int]:
    """The ablate layers a module imports, each with the first line that does."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "ablate":  # from ablate import spec
                names = [f"ablate.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.setdefault("(relative import)", node.lineno)
        for name in names:
            parts = name.split(".")
            if parts[0] == "ablate" and len(parts) > 1:
                found.setdefault(parts[1], node.lineno)
    return found


def violations(package: Path) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        layer = layer_of(package, path)
        for other, line in imported_layers(path).items():
            where = f"ablate/{path.relative_to(package)}:{line} imports ablate.{other}"
            if other == "(relative import)":
                found.append(f"{where}: use absolute ablate.… imports")
            elif other == layer or not layer:
                continue
            elif layer in ALLOWED and other not in ALLOWED[layer]:
                found.append(f"{where}: {layer} may import only {sorted(ALLOWED[layer])}")
            elif other in NEVER.get(layer, set()) or other == "cli":
                found.append(f"{where}: {layer} never imports {other}")
    return found


def test_the_package_has_every_layer():
    layers = {layer_of(PACKAGE, p) for p in PACKAGE.rglob("*.py")}
    assert {"spec", "store", "models", "data", "train", "evals", "generate", "launch", "report",
            "cli"} <= layers


def test_imports_go_one_way():
    assert violations(PACKAGE) == []


def test_the_check_sees_lazy_imports_and_names_the_line(tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "runs.py").write_text(
        "import os\nfrom ablate.spec import plan\n\ndef f():\n"
        "    from ablate.report import tables\n    import ablate.launch.local\n")
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "dpo.py").write_text("from ablate import evals, cli\n")
    (tmp_path / "evals").mkdir()
    (tmp_path / "evals" / "judges.py").write_text(
        "from ablate.generate import reward_model\n\ndef f():\n    from ablate.train.rm import x\n")
    (tmp_path / "generate").mkdir()
    (tmp_path / "generate" / "hf.py").write_text("import ablate.train.common\n")
    assert violations(tmp_path) == [
        "ablate/evals/judges.py:4 imports ablate.train: evals never imports train",
        "ablate/generate/hf.py:1 imports ablate.train: generate never imports train",
        "ablate/store/runs.py:5 imports ablate.report: store may import only ['spec']",
        "ablate/store/runs.py:6 imports ablate.launch: store may import only ['spec']",
        "ablate/train/dpo.py:1 imports ablate.cli: train never imports cli",
    ]
