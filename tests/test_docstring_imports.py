"""Docstring examples import paths that exist (a module moved in a restructure must take its examples along)."""

import ast
import importlib
import re
from pathlib import Path

import pytest

# Imported at collection, as the other test modules do: transformers' first import warns inside torch (pytree).
import modeling_rrg  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
# `>>> from training.x import a, b` or a plain import line inside a docstring's code block.
IMPORT = re.compile(r"^\s*(?:>>>|\.\.\.)?\s*from\s+((?:training|modeling_rrg)[\w.]*)\s+import\s+([\w, ]+)$", re.M)


def _docstring_imports():
    for path in sorted([*ROOT.glob("training/**/*.py"), *ROOT.glob("modeling_rrg/*.py")]):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                for module, names in IMPORT.findall(ast.get_docstring(node, clean=False) or ""):
                    yield f"{path.relative_to(ROOT)}: from {module} import {names.strip()}", module, names


CASES = list(_docstring_imports())


def test_the_scan_finds_the_examples():
    assert len(CASES) >= 10, CASES  # the labeler, scoring, synthetic, serve, arguments ... examples


@pytest.mark.parametrize("where, module, names", CASES, ids=[case[0] for case in CASES])
def test_docstring_import_resolves(where, module, names):
    imported = importlib.import_module(module)
    missing = [name.strip() for name in names.split(",") if name.strip() and not hasattr(imported, name.strip())]
    assert not missing, f"{where}: {module} has no {missing}"
