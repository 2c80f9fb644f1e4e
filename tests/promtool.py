"""Prometheus's own checker on a page, for every test that claims a page is valid."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def promtool_findings(text: str) -> set[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: run `make tools` (installs Debian's prometheus package)")
    result = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    output = (result.stdout + result.stderr).decode()
    findings = {line.strip() for line in output.splitlines() if line.strip()}
    if result.returncode not in (0, 3):  # 3: lint findings only; anything else: unparsable
        pytest.fail(f"promtool could not read the page: {output}")
    return findings
