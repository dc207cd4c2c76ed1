"""A developer's install, ``pip install -e .`` (setuptools' default editable mode), gives
``twistd`` this tree's plugins: ``twisted/plugins`` is found through ``sys.path``, so the
editable install must put the project's directory there rather than an import hook."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """from twisted.application.service import ServiceMaker

probe = ServiceMaker("editable-probe", "buildmaster.tap", "Found in the editable tree.", "editable-probe")
"""


def test_an_editable_install_shows_twistd_the_trees_plugins(tmp_path: Path) -> None:
    # a copy of the project, with a plugin of its own that only the copy has
    project = tmp_path / "project"
    project.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "dropin.cache", "*.egg-info")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    for name in ("buildmaster", "slavesim", "twisted"):
        shutil.copytree(ROOT / name, project / name, ignore=ignore)
    (project / "twisted" / "plugins" / "editable_probe.py").write_text(PROBE)

    # what `pip install -e .` asks of the build backend (PEP 660), then what pip installs
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from setuptools import build_meta; build_meta.build_editable(sys.argv[1])",
            str(wheels),
        ],
        cwd=project,
        check=True,
        capture_output=True,
    )
    [wheel] = wheels.glob("*.whl")
    site_packages = tmp_path / "site-packages"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site_packages)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    listing = subprocess.run(
        [
            sys.executable,
            "-c",
            "import site, sys; site.addsitedir(sys.argv[1]); sys.argv[1:] = ['--help'];"
            " from twisted.scripts.twistd import run; run()",
            str(site_packages),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listing.returncode == 0, listing.stderr
    assert "editable-probe" in listing.stdout, listing.stdout
