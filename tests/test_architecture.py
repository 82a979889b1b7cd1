"""The package's shape: no import circle, lower layers never import higher ones, and the command starts light."""
import ast
import graphlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ferkit

PACKAGE = Path(ferkit.__file__).parent

# Each folder may import those below it, never those above: models, losses, data and detect know nothing
# of configs or the engine; configs check names against their registries; the engine knows nothing of the
# analysis, the server, the paper's reproduction or the CLI.
LAYERS = {
    "ferkit.models": 1, "ferkit.losses": 1, "ferkit.data": 1, "ferkit.detect": 1,
    "ferkit.config": 2,
    "ferkit.engine": 3,
    "ferkit.analysis": 4, "ferkit.serve": 4, "ferkit.scale": 4,
    "ferkit.paper": 5,
    "ferkit.cli": 6, "ferkit.__main__": 6,
}


def import_graph(root: Path, package: str = "ferkit") -> dict[str, set[str]]:
    """Which modules of ``package`` (laid out in ``root``) each of its modules imports, at its top or inside
    a function alike: a deferred import still closes a circle. ``if TYPE_CHECKING`` blocks are left out."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for module, path in modules.items():
        base_package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        typing_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and ast.unparse(block.test).endswith("TYPE_CHECKING") for node in ast.walk(block)}
        targets = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), base_package)
                names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            else:
                continue
            for name in names:
                while name and name not in modules:
                    name = name.rpartition(".")[0]
                if name and name != module:
                    targets.add(name)
        graph[module] = targets
    return graph


def layer(module: str) -> int:
    """The layer of a module: that of the longest LAYERS prefix; 0 (the bottom) for shared top-level modules."""
    owners = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    return LAYERS[max(owners, key=len)] if owners else 0


def test_no_module_imports_its_way_back_to_itself():
    graph = import_graph(PACKAGE)
    assert {"ferkit.cli", "ferkit.detect.faces", "ferkit.engine.inference"} <= set(graph)
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the circle


def test_a_circle_would_be_found(tmp_path):
    # A registry that imports a backend (inside a function) which imports the registry back.
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "registry.py").write_text("def find():\n    from . import toy\n")
    (tmp_path / "toy.py").write_text("from ferkit.registry import find\n")
    graph = import_graph(tmp_path)
    assert graph["ferkit.registry"] == {"ferkit.toy"} and graph["ferkit.toy"] == {"ferkit.registry"}
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter(graph).prepare()


def test_lower_layers_never_import_higher_ones():
    upward = sorted(f"{module} -> {target}" for module, targets in import_graph(PACKAGE).items()
                    for target in targets if layer(target) > layer(module))
    assert upward == []


def test_detectors_sit_on_the_registry_and_the_registry_on_shared_geometry():
    graph = import_graph(PACKAGE)
    order = list(graphlib.TopologicalSorter(graph).static_order())
    for backend in ("haar", "blazeface"):
        assert order.index("ferkit.detect.geometry") < order.index("ferkit.detect.faces") < order.index(
            f"ferkit.detect.{backend}")
    assert graph["ferkit.detect.geometry"] <= {"ferkit.errors"} and graph["ferkit.detect.cores"] == set()


def test_the_command_starts_without_model_code():
    # `ferkit --help` and argument errors must not wait for torch, OpenCV or the readers to load.
    script = ("import sys; from ferkit.cli import build_parser; build_parser([]).format_help(); "
              "print(sorted(m for m in ('torch', 'cv2', 'numpy', 'matplotlib', 'ferkit.data', 'ferkit.engine') "
              "if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def test_a_new_detector_or_reader_is_one_file_dropped_into_its_folder(tmp_path):
    # A copy of the package with one new module in detect/ and one in data/, and no other file touched.
    shutil.copytree(PACKAGE, tmp_path / "ferkit", ignore=shutil.ignore_patterns("weights", "__pycache__"))
    (tmp_path / "ferkit" / "detect" / "nothing.py").write_text(
        "from ferkit.detect.faces import register_detector\n\n\n"
        "@register_detector('nothing', 'finds no face')\n"
        "def find_nothing(image, min_size):\n    return []\n")
    (tmp_path / "ferkit" / "data" / "toyset.py").write_text(
        "from ferkit.data.readers import register_reader\n\n\n"
        "def load_toyset(path):\n    return {}\n\n\n"
        "register_reader('toyset', 'Toy set', ('<root>/toy.txt',), lambda root: (root / 'toy.txt').is_file(),\n"
        "                load_toyset, description='a toy set')\n")
    script = ("import ferkit.data, ferkit.detect; print(ferkit.data.__file__); "
              "print(ferkit.detect.describe_detectors()['nothing']); print(ferkit.data.data_formats()[-1])")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)})
    where, description, last_format = run.stdout.split("\n")[:3]
    assert where.startswith(str(tmp_path)) and description == "finds no face" and last_format == "toyset"
