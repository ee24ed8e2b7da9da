"""The house: floors that only point down, no import circle, and docs that list every module.

    floor 0  ablate.paths, ablate.redact, ablate.progress, ablate.verdicts, ablate.sweepdir
    floor 1  ablate.data      rows -> pairs, tokens, checks, held-out metrics
    floor 2  ablate.train     one cell's training
    floor 3  ablate.config    the schemas (they name the objectives and engine settings)
    floor 4  ablate.review    W&B runs and report
    floor 5  ablate.collect   the decision and the local report
    floor 6  ablate.sweep     planning, running, SLURM, status
    floor 7  ablate (package), ablate.__main__, ablate.cli, ablate.collect.__main__, hydra_plugins: entry points

Lazy imports inside functions count too: they run in the same process.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOORS = [
    ("ablate.paths", "ablate.redact", "ablate.progress", "ablate.verdicts", "ablate.sweepdir"),
    ("ablate.data",),
    ("ablate.train",),
    ("ablate.config",),
    ("ablate.review",),
    ("ablate.collect",),
    ("ablate.sweep",),
    ("ablate", "ablate.__main__", "ablate.cli", "ablate.collect.__main__", "hydra_plugins"),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    files = [*(ROOT / "ablate").rglob("*.py"), *(ROOT / "hydra_plugins").rglob("*.py")]
    return {module_name(p): p for p in files if "conf" not in p.relative_to(ROOT).parts}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The ablate/hydra_plugins modules a file imports, anywhere in it (`from a.b import c` counts a.b.c when that
    is a module, else a.b)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                     for alias in node.names]
        else:
            continue
        found |= {n for n in names if n in known}
    return found


def floor(module: str) -> int:
    best = None
    for level, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if module == prefix or (prefix != "ablate" and module.startswith(prefix + ".")):
                if best is None or len(prefix) > best[1]:
                    best = (level, len(prefix))
    assert best is not None, f"{module} belongs to no floor: add it to FLOORS in {Path(__file__).name}"
    return best[0]


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(path, set(found)) - {name} for name, path in found.items()}


def test_floors_only_point_down():
    upward = [f"{source} (floor {floor(source)}) imports {target} (floor {floor(target)})"
              for source, targets in graph().items() for target in sorted(targets) if floor(target) > floor(source)]
    assert not upward, "\n".join(upward)


def test_the_training_side_never_imports_the_collector():
    edges = [(s, t) for s, ts in graph().items() for t in ts
             if s.startswith(("ablate.train", "ablate.data")) and t.startswith("ablate.collect")]
    assert not edges


def test_no_import_circle():
    edges = graph()
    seen: dict[str, int] = {}  # 1: on the current path, 2: finished

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for target in sorted(edges[node]):
            if seen.get(target) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in seen:
                visit(target, path + [target])
        seen[node] = 2

    for node in sorted(edges):
        if node not in seen:
            visit(node, [node])


def test_the_floors_cover_every_module():
    for name in modules():
        floor(name)


def listed_paths(text: str) -> set[str]:
    return set(re.findall(r"`((?:ablate|hydra_plugins)/[\w/]+\.py)`", text))


def test_architecture_and_readme_name_every_module():
    files = {str(p.relative_to(ROOT)) for p in modules().values() if p.name != "__init__.py"}
    for doc in ("docs/ARCHITECTURE.md", "README.md"):
        named = listed_paths((ROOT / doc).read_text())
        assert not files - named, f"{doc} does not name: {', '.join(sorted(files - named))}"
        assert not named - files, f"{doc} names modules that do not exist: {', '.join(sorted(named - files))}"


def test_nothing_points_outside_the_repository():
    pattern = re.compile("|".join(["DESIGN" + " §", r"\.\./" + "shared", "shared/" + "DESIGN"]))  # not itself a hit
    offenders = []
    for path in [*ROOT.glob("ablate/**/*"), *ROOT.glob("conf/**/*"), *ROOT.glob("docs/**/*"), *ROOT.glob("tests/**/*"),
                 *ROOT.glob("hydra_plugins/**/*"), *ROOT.glob("benchmarks/**/*"), *ROOT.glob("sweeps/**/*"),
                 *ROOT.glob("notebooks/**/*"), ROOT / "README.md", ROOT / "pyproject.toml"]:
        if path.is_file() and path.suffix in {".py", ".md", ".yaml", ".toml", ".ipynb", ".sh", ".txt"}:
            if pattern.search(path.read_text(errors="replace")):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"these files cite a design file outside the repository: {offenders}"
