"""What pip installs: the folder app/ as the package `vllm_gateway`, every subpackage listed."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {"vllm_gateway": "app"}
    folders = {
        ".".join(("vllm_gateway", *init.parent.relative_to(ROOT / "app").parts))
        for init in (ROOT / "app").rglob("__init__.py")
    }
    assert folders == set(config["packages"])


def test_the_source_uses_relative_imports_only() -> None:
    """`from app...` inside the package would import a second, uninstalled copy (or fail when installed)."""
    offenders = [str(path.relative_to(ROOT)) for path in (ROOT / "app").rglob("*.py")
                 if any(line.lstrip().startswith(("from app", "import app")) for line in path.read_text().splitlines())]
    assert offenders == []


def _imports() -> dict[str, set[str]]:
    """Every module of the package and the package's modules it imports (relative imports resolved,
    imports inside functions included, `if TYPE_CHECKING:` blocks left out)."""
    import ast

    modules = {".".join(p.relative_to(ROOT / "app").with_suffix("").parts): p for p in (ROOT / "app").rglob("*.py")}
    modules = {name.removesuffix(".__init__") if name != "__init__" else "": path for name, path in modules.items()}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        tree = ast.parse(path.read_text())
        skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for n in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in skipped or not isinstance(node, ast.ImportFrom) or not node.level:
                continue
            base = package.split(".") if package else []
            base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            for alias in node.names:
                candidate = f"{target}.{alias.name}" if target else alias.name
                found.add(candidate if candidate in modules else target)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_cycle_between_modules() -> None:
    assert _cycle(_imports()) is None


def test_no_import_cycle_between_packages() -> None:
    """The packages depend one way: http and routing below forwarding, forwarding below api."""
    packages: dict[str, set[str]] = {}
    for module, targets in _imports().items():
        if "." not in module:
            continue  # the top-level modules (gateway, cli) wire everything together
        package = module.split(".")[0]
        packages.setdefault(package, set()).update(t.split(".")[0] for t in targets if "." in t)
    assert _cycle({p: deps - {p} for p, deps in packages.items()}) is None


def test_the_operator_page_and_its_assets_stay_under_150_kb() -> None:
    static = ROOT / "app" / "ui" / "static"
    page = sum(path.stat().st_size for path in static.iterdir() if path.name != "login.html")
    print(f"\noperator page with its assets: {page:,} bytes")
    assert page < 150_000


def test_the_wheel_holds_vllm_gateway_with_the_pages_assets_and_no_top_level_app(tmp_path: Path) -> None:
    """What `pip install .` puts into site-packages: every module under `vllm_gateway/`, the
    operator page's files, nothing else."""
    import shutil
    import subprocess
    import sys
    import zipfile

    source = tmp_path / "src"  # built from a copy: setuptools writes build/ beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "app", source / "app", ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("vllm_gateway-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {name.split("/")[0] for name in names if ".dist-info/" not in name} == {"vllm_gateway"}
    modules = {str(p.relative_to(ROOT / "app")) for p in (ROOT / "app").rglob("*.py")}
    assert {name.removeprefix("vllm_gateway/") for name in names if name.endswith(".py")} == modules
    for asset in ("index.html", "login.html", "ui.css", "ui.js", "favicon.svg"):
        assert f"vllm_gateway/ui/static/{asset}" in names
