"""The project's shape: the top level a user asked for, one package for the machinery, imports that point
one way, and modules small enough to read."""
import ast
import subprocess
import sys

import pytest

from conftest import ROOT

PACKAGE = ROOT / "tudui"


def project_imports(path):
    """The project's own modules that the file at PATH imports (model, train, predict, tudui.*)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name.split(".")[0] in {"model", "train", "predict", "tudui"}}
    modules = {f"tudui.{p.stem}" for p in PACKAGE.glob("*.py")} | {"model", "train", "predict", "tudui"}
    return {name for name in found if name in modules}


def test_the_top_level_holds_model_train_and_predict_and_no_other_python_module():
    assert sorted(p.name for p in ROOT.glob("*.py")) == ["model.py", "predict.py", "train.py"]
    assert (PACKAGE / "__init__.py").exists()


def test_nothing_in_the_package_imports_train_py_or_predict_py():
    for path in PACKAGE.glob("*.py"):
        assert not project_imports(path) & {"train", "predict"}, path.name


def test_the_package_has_no_import_cycle():
    graph = {f"tudui.{p.stem}": project_imports(p) - {"model", "tudui"} for p in PACKAGE.glob("*.py")}
    done, on_path = set(), []

    def visit(module):
        assert module not in on_path, " -> ".join(on_path + [module])
        if module in done:
            return
        on_path.append(module)
        for imported in graph.get(module, ()):
            visit(imported)
        on_path.pop()
        done.add(module)
    for module in graph:
        visit(module)


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")) + [ROOT / "predict.py"], ids=lambda p: p.name)
def test_each_module_opens_with_a_docstring_and_has_at_most_350_lines(path):
    assert ast.get_docstring(ast.parse(path.read_text())), path.name
    assert len(path.read_text().splitlines()) <= 350


def test_train_py_has_at_most_300_lines():
    assert len((ROOT / "train.py").read_text().splitlines()) <= 300


@pytest.mark.slow
def test_importing_train_brings_no_generic_top_level_module_of_the_project():
    code = """
import os, sys, train
root = sys.argv[1]
files = {name: getattr(module, "__file__", None) or "" for name, module in list(sys.modules.items()) if "." not in name}
print(sorted(name for name, file in files.items() if os.path.dirname(file) == root
             or (os.path.basename(file) == "__init__.py" and os.path.dirname(os.path.dirname(file)) == root)))
"""
    out = subprocess.run([sys.executable, "-c", code, str(ROOT)], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['model', 'train', 'tudui']"
