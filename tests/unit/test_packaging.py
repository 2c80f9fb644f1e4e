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
