"""The package's layers import only downward, and the package names no shared folder.

Layers, lowest first: ``config`` and ``overrides``, then ``structures``, ``dist``, ``files`` and
``ops``; then ``checkpoint``, ``model`` and ``data``; then ``convert``; then ``engine``, ``export``
and ``serve``; then ``cli`` (and ``__main__``, ``__init__``, which expose it). A module may import its
own layer and those below, never one above.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "maskrcnn"
RANK = {
    "config": 0,
    "overrides": 0,
    "structures": 1, "dist": 1, "files": 1, "checkpoint": 2, "ops": 1,
    "model": 2, "data": 2,
    "convert": 3,
    "engine": 4, "export": 4, "serve": 4,
    "cli": 5, "__main__": 6, "__init__": 6,
}


def _imported_layers(path: Path, parts: tuple[str, ...] | None = None) -> list[tuple[str, int]]:
    """``(top-level maskrcnn module, line)`` of every import of the package in ``path``.

    ``parts``: the module's dotted name inside ``maskrcnn`` (default: from its path).
    """
    parts = parts or path.relative_to(PACKAGE).with_suffix("").parts
    package = list(parts[:-1])  # the module's own package, inside maskrcnn
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                if node.level - 1 > len(package):
                    continue
                names = base + (node.module.split(".") if node.module else [])
                targets = [names[0]] if names else [alias.name for alias in node.names]
            elif node.module and (node.module == "maskrcnn" or node.module.startswith("maskrcnn.")):
                names = node.module.split(".")[1:]
                targets = [names[0]] if names else [alias.name for alias in node.names]
            else:
                continue
        elif isinstance(node, ast.Import):
            targets = [a.name.split(".")[1] for a in node.names if a.name.startswith("maskrcnn.")]
        else:
            continue
        found += [(t, node.lineno) for t in targets]
    return found


def test_every_module_belongs_to_a_layer() -> None:
    tops = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in PACKAGE.rglob("*.py")}
    assert tops <= set(RANK), f"modules without a layer: {sorted(tops - set(RANK))}"


def test_layers_import_only_downward() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for target, line in _imported_layers(path):
            if target in RANK and RANK[target] > RANK[layer]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({layer}) imports {target}")
    assert not upward, "\n".join(upward)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The import reader resolves relative and absolute imports (so the layering test can fail)."""
    probe = tmp_path / "probe.py"
    probe.write_text("from ..engine import train\nfrom maskrcnn.cli import main\nimport maskrcnn.model.rpn\n"
                     "from . import boxes\nfrom .nms import nms\n")
    found = [t for t, _ in _imported_layers(probe, ("ops", "probe"))]
    assert found == ["engine", "cli", "model", "ops", "ops"]


def test_the_package_names_no_shared_folder() -> None:
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert '"shared"' not in text and "'shared'" not in text and "MASKRCNN_SHARED" not in text, path
        assert "reference_dir" not in text and "write_fixture_weights" not in text, path
