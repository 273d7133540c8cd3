"""The package's shape, as docs/explanation/architecture.md describes it.

Read from the source with :mod:`ast`, nothing imported: which module imports
which, how long each is, and whether the architecture page names every one.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "jupyter_gpu_meter"
ARCHITECTURE = ROOT / "docs" / "explanation" / "architecture.md"

#: the longest a module may grow before it is split (the issue said "about 500")
MAX_LINES = 500

#: modules that decide and compute, and so import no plumbing (STYLE.md, 9)
PURE = (
    "jupyter_gpu_meter.usage",
    "jupyter_gpu_meter.policies",
    "jupyter_gpu_meter.isolation",
    "jupyter_gpu_meter.choice",
    "jupyter_gpu_meter.allocation",
    "jupyter_gpu_meter.labels",
    "jupyter_gpu_meter.clock",
    "jupyter_gpu_meter.spawn_form",
    "jupyter_gpu_meter.project_templates",
)
#: what a pure module may not import: I/O, engines, servers, drivers
PLUMBING = ("docker", "sqlalchemy", "tornado", "pynvml", "jupyterhub", "requests", "subprocess")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for path in sorted(PACKAGE.rglob("*.py"))
        if "migrations" not in path.parts
    }


def imports(name: str, path: Path) -> set[str]:
    """The absolute names `path` imports (relative imports resolved), at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_no_module_is_over_the_limit():
    long = {
        name: lines
        for name, path in modules().items()
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"split these modules (at most {MAX_LINES} lines each): {long}"


def test_nothing_outside_the_service_imports_it():
    """The hub process (spawner, hubconfig) never loads the meter service, nor the CLI."""
    apart = ("jupyter_gpu_meter.service", "jupyter_gpu_meter.cli")
    wrong = {
        name: sorted(
            target
            for target in imports(name, path)
            if any(within(target, prefix) for prefix in apart)
        )
        for name, path in modules().items()
        if not any(within(name, prefix) for prefix in apart)
    }
    assert {name: found for name, found in wrong.items() if found} == {}


def test_the_service_never_imports_the_cli():
    wrong = {
        name: sorted(t for t in imports(name, path) if within(t, "jupyter_gpu_meter.cli"))
        for name, path in modules().items()
        if within(name, "jupyter_gpu_meter.service")
    }
    assert {name: found for name, found in wrong.items() if found} == {}


@pytest.mark.parametrize("pure", PURE)
def test_pure_modules_import_no_plumbing(pure):
    found = {
        name: sorted(target for target in imports(name, path) if target.split(".")[0] in PLUMBING)
        for name, path in modules().items()
        if within(name, pure)
    }
    assert found, f"{pure} is not in the package any more: update PURE"
    assert {name: targets for name, targets in found.items() if targets} == {}


def test_the_architecture_page_names_every_module_and_no_other():
    named = set(re.findall(r"`(jupyter_gpu_meter(?:\.[a-z_0-9]+)*)`", ARCHITECTURE.read_text()))
    package = {name for name in modules() if "._" not in name}  # not _version, __main__
    assert sorted(package - named) == [], "modules the architecture page does not describe"
    assert sorted(named - package) == [], "the architecture page names modules that do not exist"
