"""setup.py tells the truth about what the code imports.

A static check, so that it needs no fresh environment: every import of every module is read with `ast`, mapped to
the distribution that provides it, and looked up among setup.py's requirements.

- A module-level import of the package (modeling_mera/, trainers/, recipes/) needs a core requirement
  (`install_requires`): `pip install mera-mcl` must be enough to import every module.
- An import inside a function, or inside `try: ... except ImportError`, is optional: it needs a core requirement
  or an extra.
- An import in tests/ needs a core requirement or the `test` extra (or an extra the test extra leaves out, for tests
  that skip without it), and the `test` extra holds every other extra, so the suite runs every optional code path.
- Every declared requirement is imported somewhere, or is listed in `NOT_IMPORTED` with the reason it is there.
"""

import ast
import functools
import importlib.metadata
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("modeling_mera", "trainers", "recipes")
TEST_MODULES = {path.stem for path in (ROOT / "tests").glob("*.py")}
FIRST_PARTY = set(PACKAGES) | TEST_MODULES | {"setup"}

# Requirements that no `import` names, and why each is declared all the same.
NOT_IMPORTED = {
    "jinja2": "huggingface_hub's ModelCard.from_template renders the stage cards with it (optional there)",
    "ruff": "the test extra's linter, run as a command by .ci/run",
}
# Extras that the test extra need not hold, and why (their tests skip without them).
NOT_IN_TEST_EXTRA = {
    "quant": "bitsandbytes is a large CUDA build; its tests run where it is installed",
    "deepspeed": "DeepSpeed needs a CUDA toolchain; ZeRO-3 runs only under a multi-GPU launch",
}


def normalize(name: str) -> str:
    """PEP 503 normalisation of a distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalize(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group(0))


def read_setup() -> tuple[list[str], dict[str, list[str]]]:
    """`install_requires` and `extras_require` of setup.py, read without running it."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    call = next(
        node for node in ast.walk(tree) if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup"
    )
    keywords = {keyword.arg: keyword.value for keyword in call.keywords}
    return ast.literal_eval(keywords["install_requires"]), ast.literal_eval(keywords["extras_require"])


class _ImportCollector(ast.NodeVisitor):
    """Top-level module names imported by a file, each marked optional when inside a function or an ImportError
    guard."""

    def __init__(self):
        self.imports: list[tuple[str, int, bool]] = []
        self._optional_depth = 0

    def _visit_optional(self, node):
        self._optional_depth += 1
        self.generic_visit(node)
        self._optional_depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _visit_optional

    def visit_Try(self, node):
        guards_import_error = any(
            handler.type is not None and re.search(r"ImportError|ModuleNotFoundError", ast.unparse(handler.type))
            for handler in node.handlers
        )
        if guards_import_error:
            self._optional_depth += 1
            for child in node.body:
                self.visit(child)
            self._optional_depth -= 1
            for child in node.handlers + node.orelse + node.finalbody:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_If(self, node):
        # `if TYPE_CHECKING:` imports never run.
        if ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            return
        self.generic_visit(node)

    def visit_Import(self, node):
        for alias in node.names:
            self.imports.append((alias.name.split(".")[0], node.lineno, self._optional_depth > 0))

    def visit_ImportFrom(self, node):
        if node.level == 0 and node.module:
            self.imports.append((node.module.split(".")[0], node.lineno, self._optional_depth > 0))


def imports_of(path: Path) -> list[tuple[str, int, bool]]:
    collector = _ImportCollector()
    collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return [item for item in collector.imports if item[0] not in sys.stdlib_module_names | FIRST_PARTY]


@functools.cache
def _providers() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distributions_of(module: str) -> set[str]:
    """The installed distributions that provide the top-level import name `module`; for a package not installed
    here (an extra such as bitsandbytes), the distribution of the same name."""
    return {normalize(name) for name in _providers().get(module, [])} or {normalize(module)}


def source_files(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


def test_setup_py_reads_and_every_requirement_is_named_once():
    core, extras = read_setup()
    names = [requirement_name(requirement) for requirement in core]
    assert len(names) == len(set(names)), f"install_requires names a distribution twice: {names}"
    for extra, requirements in extras.items():
        overlap = set(map(requirement_name, requirements)) & set(names)
        assert not overlap, f"extra {extra!r} repeats core requirements {sorted(overlap)}"


def test_every_import_is_declared_where_it_is_needed():
    core, extras = read_setup()
    core_names = {requirement_name(requirement) for requirement in core}
    extra_names = {requirement_name(requirement) for requirements in extras.values() for requirement in requirements}
    test_names = {requirement_name(requirement) for requirement in extras["test"]}
    test_names |= {requirement_name(spec) for extra in NOT_IN_TEST_EXTRA for spec in extras[extra]}
    problems = []
    for path in source_files(*PACKAGES, "tests"):
        in_tests = path.parts[len(ROOT.parts)] == "tests"
        for module, line, optional in imports_of(path):
            where = f"{path.relative_to(ROOT)}:{line} imports {module}"
            provided_by = distributions_of(module)
            if in_tests:
                if not provided_by & (core_names | test_names):
                    problems.append(f"{where} ({sorted(provided_by)}): not in install_requires or the test extra")
            elif not optional and not provided_by & core_names:
                problems.append(
                    f"{where} ({sorted(provided_by)}) at module level: not in install_requires "
                    "(import it inside the function that needs it, declare it in an extra)"
                )
            elif not provided_by & (core_names | extra_names):
                problems.append(f"{where} ({sorted(provided_by)}): not in install_requires or any extra")
    assert not problems, "Undeclared imports:\n" + "\n".join(problems)


def test_every_requirement_is_imported_or_says_why_not():
    core, extras = read_setup()
    imported = set()
    for path in source_files(*PACKAGES, "tests"):
        for module, _, _ in imports_of(path):
            imported |= distributions_of(module)
    declared = {requirement_name(requirement) for requirement in core}
    declared |= {requirement_name(requirement) for requirements in extras.values() for requirement in requirements}
    unused = sorted(declared - imported - set(NOT_IMPORTED) - {"pytest"})
    assert not unused, f"setup.py declares {unused}, which nothing imports; drop them or say why in NOT_IMPORTED"


def test_the_test_extra_holds_every_optional_dependency():
    _, extras = read_setup()
    test_names = {requirement_name(requirement) for requirement in extras["test"]}
    for extra, requirements in extras.items():
        if extra == "test" or extra in NOT_IN_TEST_EXTRA:
            continue
        missing = {requirement_name(requirement) for requirement in requirements} - test_names
        assert not missing, f"the test extra lacks {sorted(missing)} of extra {extra!r}, so no test runs that code"


# Extras of our requirements that the code needs: MeraForCausalLM is a torch model, so transformers' `torch` extra
# (which holds its torch floor) applies.
EXTRAS_USED = {"transformers": {"torch"}}
# Requirements whose internals the code leans on: each needs an upper bound.
LEANS_ON_INTERNALS = ("peft", "trl")


def _floor(specifier_set) -> Version:
    floors = [Version(spec.version) for spec in specifier_set if spec.operator in (">=", ">", "==", "~=")]
    return max(floors, default=Version("0"))


def test_floors_admit_no_version_that_another_requirement_refuses():
    """A floor below what another core requirement needs promises versions that can never be installed together.
    Read against the installed libraries' own metadata, so a library update that raises its floor shows here."""
    core = [Requirement(spec) for spec in read_setup()[0]]
    ours = {normalize(requirement.name): requirement for requirement in core}
    too_low = []
    for dependent in ours:
        extras = {""} | EXTRAS_USED.get(dependent, set()) | ours[dependent].extras
        for spec in importlib.metadata.requires(dependent) or []:
            theirs = Requirement(spec)
            name = normalize(theirs.name)
            if name not in ours or (
                theirs.marker is not None and not any(theirs.marker.evaluate({"extra": extra}) for extra in extras)
            ):
                continue
            if _floor(ours[name].specifier) < _floor(theirs.specifier):
                too_low.append(f"setup.py's {ours[name]} is below {dependent}'s {theirs}")
    assert not too_low, "\n".join(too_low)


def test_libraries_whose_internals_we_use_have_an_upper_bound():
    core = {normalize(Requirement(spec).name): Requirement(spec) for spec in read_setup()[0]}
    for name in LEANS_ON_INTERNALS:
        assert any(spec.operator in ("<", "<=", "~=", "==") for spec in core[name].specifier), (
            f"setup.py's {core[name]} has no upper bound, but the code relies on its internals"
        )
