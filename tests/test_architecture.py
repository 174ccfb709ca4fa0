"""The dependency rule, checked: the import-linter contracts in pyproject.toml (layers, no kfp/click below the
CLI, a pure science), no import cycle inside `amnesia`, and the CPU-only modules that never load torch."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(cwd), "HOME": str(cwd)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_import_contracts_are_kept() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout and "5 kept" in result.stdout, result.stdout[-2000:]


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("amnesia/science/tracing/leak.py", "import boto3\n", "the science is pure"),
        ("amnesia/stages/split/leak.py", "from amnesia.governance import registry\n", "layers"),
        ("amnesia/governance/leak.py", "import kfp\n", "nothing below the CLI"),
        ("amnesia/results/leak.py", "import torch\n", "torch-free"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(tmp_path: Path, module: str, line: str, broken: str) -> None:
    """The contracts catch what they say they do: one import added to a copy of the tree breaks exactly it."""
    for name in ("amnesia", "components", "pipelines"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / module).write_text(line)
    result = _lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout[-2000:]
    broken_section = result.stdout.split("Broken contracts", 1)[-1]
    assert broken in broken_section and module.removesuffix(".py").replace("/", ".") in broken_section


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next((c for c in children if c in graph.modules), None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_amnesia_has_no_import_cycle() -> None:
    graph = grimp.build_graph("amnesia", cache_dir=None)  # imports inside functions count too
    assert len(graph.modules) > 50
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "loop"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from loop import b\n")
    (pkg / "b.py").write_text("def f():\n    from loop import c\n")
    (pkg / "c.py").write_text("import loop.a\n")
    (pkg / "d.py").write_text("import loop.a\n")
    sys.path.insert(0, str(tmp_path))
    try:
        assert _cycles(grimp.build_graph("loop", cache_dir=None)) == [["loop.a", "loop.b", "loop.c"]]
    finally:
        sys.path.remove(str(tmp_path))


CPU_ONLY = (
    "amnesia.stages.gate.stage",  # the gate pod parses two evaluations and writes a report
    "amnesia.governance.registry",  # the register pod, approve, reject
    "amnesia.governance.audit",
    "amnesia.governance.evidence",
    "amnesia.governance.review",  # the reviewers' page
    "amnesia.runtime.summary",
    "amnesia.results.figures",
)


def test_the_gate_and_the_registry_do_not_load_torch() -> None:
    code = "import sys\n" + "".join(f"import {m}\n" for m in CPU_ONLY)
    code += "print(sorted(m for m in ('torch', 'transformers', 'kfp', 'click') if m in sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"loaded by {CPU_ONLY}: {out.stdout}"


def test_every_layer_says_what_it_may_import() -> None:
    layers = ("core", "science", "storage", "results", "stages", "governance", "runtime", "cli", "devstack", "demo")
    for layer in layers:
        doc = (ROOT / "amnesia" / layer / "__init__.py").read_text()
        assert doc.startswith('"""') and "import" in doc.split('"""')[1], f"amnesia/{layer}/__init__.py"


def test_the_readme_layout_names_every_module_and_folder() -> None:
    """The README's layout section is the tree as it is: every package folder and module of amnesia named."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Layout\n", 1)[1].split("\n## ", 1)[0]
    tree = section.split("```", 2)[1]
    modules = [p for p in (ROOT / "amnesia").rglob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    missing = sorted({str(p.relative_to(ROOT)) for p in modules if p.stem not in tree})
    folders = sorted({p.parent.name for p in modules} - {"amnesia"})
    assert not missing, f"modules the README's layout does not name: {missing}"
    assert not [f for f in folders if f"{f}/" not in tree], folders
