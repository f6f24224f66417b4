"""The README's two commands are the real entry points, and CI runs the test one verbatim."""

from __future__ import annotations

import os
import subprocess

from tests.conftest import REPO_ROOT


def test_readme_starts_with_the_two_commands():
    first_lines = (REPO_ROOT / "README.md").read_text().splitlines()[:2]
    assert first_lines == ["scripts/dev demo", "scripts/dev test"]


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    commands = [line.strip() for line in ci if line.strip() and not line.lstrip().startswith("#")]
    assert "set -euo pipefail" in commands
    assert commands[-1] == "scripts/dev test"


def test_dev_script_is_executable_valid_bash_and_rejects_unknown_commands():
    script = REPO_ROOT / "scripts" / "dev"
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    result = subprocess.run([str(script), "no-such-command"], capture_output=True, text=True)
    assert result.returncode != 0 and "usage: scripts/dev demo" in result.stderr
