"""The project is an installed package (pyproject.toml, installed by ./install.sh): its console
scripts exist and `python -m ea_core` works from any folder, not only from the checkout."""

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

DIST = "easy-adaptation-studio"
SCRIPTS = {"ea-studio": "app:main", "easy-adapt": "ea_core.cli:main"}


def _installed() -> metadata.Distribution:
    try:
        return metadata.distribution(DIST)
    except metadata.PackageNotFoundError:
        raise AssertionError(f"{DIST} is not installed in {sys.prefix}: run ./install.sh") from None


def _env_without_checkout() -> dict[str, str]:
    """The environment minus PYTHONPATH, so only the installed package can answer."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_console_scripts_are_declared_and_resolve_to_callables():
    scripts = {ep.name: ep for ep in _installed().entry_points if ep.group == "console_scripts"}
    assert {name: ep.value for name, ep in scripts.items()} == SCRIPTS
    for ep in scripts.values():
        assert callable(ep.load()), ep


def test_python_m_ea_core_help_works_from_any_folder(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ea_core", "--help"], cwd=tmp_path, env=_env_without_checkout(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:")
    assert "demo" in proc.stdout and "predict" in proc.stdout


def test_console_scripts_are_in_the_environments_bin_and_the_cli_answers_help(tmp_path):
    _installed()
    bin_dir = Path(sys.executable).parent  # not resolved: a venv's python is a link to the base interpreter
    for name in SCRIPTS:
        assert (bin_dir / name).is_file(), f"{bin_dir / name} is missing: run ./install.sh"
    proc = subprocess.run([str(bin_dir / "easy-adapt"), "--help"], cwd=tmp_path, env=_env_without_checkout(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:")
