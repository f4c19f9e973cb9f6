"""The package boundary: the core never imports a built-in reward, and no library module is a ``__main__``."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = [p for p in sorted((ROOT / "tdmr1_lightning").rglob("*.py")) if "shapes" not in p.relative_to(ROOT).parts]
LIBRARY = [*sorted((ROOT / "tdmr1_lightning").rglob("*.py"))]


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            package = path.parent
            for _ in range(node.level - 1):
                package = package.parent
            names.add(".".join([*package.relative_to(ROOT).parts, *([node.module] if node.module else [])]))
    return names


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_imports_neither_the_rewards_package_nor_the_shapes_world(path):
    bad = {m for m in _imported_modules(path) if m.startswith(("tdmr1_rewards", "tdmr1_lightning.shapes"))}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_no_library_module_is_a_main():
    mains = [str(p.relative_to(ROOT)) for p in LIBRARY if 'if __name__ == "__main__"' in p.read_text(encoding="utf-8")]
    assert mains == ["tdmr1_lightning/cli.py"]  # the one place commands start (and __main__.py calls it)


def test_the_import_check_sees_relative_imports(tmp_path):
    module = ROOT / "tdmr1_lightning" / "evaluation" / "stats.py"
    assert "tdmr1_lightning" not in _imported_modules(module)  # stdlib only
    assert "tdmr1_lightning.evaluation.stats" in _imported_modules(
        ROOT / "tdmr1_lightning" / "evaluation" / "tables.py"
    )
