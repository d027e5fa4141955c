"""
The package map, read from the source: the import direction modeling_mera <- trainers <- recipes, no import cycles,
and `modeling_mera` importing only what travels with it to the Hub (torch, transformers and their own dependencies,
the standard library, and itself through single-level relative imports).

Imports are read with `ast` (every `import` statement, also those inside functions), so nothing is executed.
"""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("modeling_mera", "trainers", "recipes")
# What `trust_remote_code` finds wherever transformers runs: torch, transformers, and transformers' own
# dependencies numpy, PIL (its `vision` extra, for image processors) and soxr (its `audio` extra, for resampling).
MODEL_CODE_IMPORTS = {"torch", "transformers", "numpy", "PIL", "soxr"}


def module_files(root: Path) -> dict[str, Path]:
    """Module name -> file, for every .py file of the first-party packages under `root`."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(name: str, path: Path) -> list[tuple[str, int]]:
    """(absolute module name, relative level) of every import in a module; `from a import b` yields `a.b`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            found += [(f"{base}.{alias.name}", node.level) for alias in node.names]
    return found


def resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The first-party module an imported name lives in (the longest known prefix), or None for a third party."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def import_graph(root: Path) -> tuple[dict[str, set[str]], list[str]]:
    """First-party import edges, and every violation of the direction rules."""
    modules = module_files(root)
    graph, problems = {name: set() for name in modules}, []
    for name, path in modules.items():
        layer = name.split(".")[0]
        for target, level in imports_of(name, path):
            top = target.split(".")[0]
            where = f"{path.relative_to(root)} imports {target}"
            if layer == "modeling_mera":
                if top == "modeling_mera" and level != 1:
                    problems.append(f"{where}: modeling_mera imports itself only through '.module' imports")
                elif top != "modeling_mera" and top not in MODEL_CODE_IMPORTS | sys.stdlib_module_names:
                    problems.append(f"{where}: modeling_mera may import only torch, transformers and the stdlib")
            if layer == "trainers" and top == "recipes":
                problems.append(f"{where}: trainers must not import recipes")
            resolved = resolve(target, modules)
            if resolved is not None and resolved != name:
                graph[name].add(resolved)
    return graph, problems


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each one import cycle or more."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node: str):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_package_map_has_no_cycle_and_keeps_its_direction():
    graph, problems = import_graph(ROOT)
    assert len(graph) > 50  # every module was read
    assert problems == []
    assert import_cycles(graph) == []
    # The stage loop never imports a method's module to load a stage (formats are recorded by import path).
    assert not any(target.startswith("trainers.methods.") for target in graph["trainers.checkpoint"])


def write_tree(root: Path, files: dict[str, str]):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_the_checker_finds_cycles_and_wrong_directions(tmp_path):
    write_tree(
        tmp_path,
        {
            "modeling_mera/__init__.py": "from .model import Model\n",
            "modeling_mera/model.py": "import torch\nimport requests\nfrom modeling_mera.config import Config\n",
            "modeling_mera/config.py": "def load():\n    from trainers.data import load_samples\n",
            "trainers/__init__.py": "",
            "trainers/data/__init__.py": "from .samples import load_samples\n",
            "trainers/data/samples.py": "from ..stage import run_stage\n",
            "trainers/stage.py": "from . import data\nfrom recipes.cli import main\n",
            "recipes/__init__.py": "",
            "recipes/cli.py": "from trainers.stage import run_stage\n",
        },
    )
    graph, problems = import_graph(tmp_path)
    assert [problem.split(": ", 1)[1] for problem in problems] == [
        "modeling_mera may import only torch, transformers and the stdlib",  # trainers.data, inside a function
        "modeling_mera may import only torch, transformers and the stdlib",  # requests
        "modeling_mera imports itself only through '.module' imports",
        "trainers must not import recipes",
    ]
    assert import_cycles(graph) == [["recipes.cli", "trainers.data", "trainers.data.samples", "trainers.stage"]]
