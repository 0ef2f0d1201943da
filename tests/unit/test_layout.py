"""The repository layout: folders map into rayrec.*, platform/ never shadows stdlib."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_stdlib_platform_not_shadowed_from_repo_root():
    out = subprocess.run(
        [sys.executable, "-c", "import platform; print(platform.system()); print(platform.__file__)"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    system, where = out.stdout.split()
    assert system in {"Linux", "Darwin", "Windows"}
    assert not Path(where).resolve().is_relative_to(REPO), where


def test_platform_folder_has_no_init():
    assert not (REPO / "platform" / "__init__.py").exists()


def test_package_list_matches_folders():
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(cfg["packages"])
    pkg_dir = cfg["package-dir"]
    found = {"rayrec"}
    for top in ("platform", "models", "ops_kernels", "jobs", "serve_apps"):
        assert pkg_dir[f"rayrec.{top}"] == top
        root = REPO / top
        found.add(f"rayrec.{top}")
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root)
            if rel.parts and "__pycache__" not in rel.parts:
                found.add(".".join(["rayrec", top, *rel.parts]))
    assert declared == found, f"pyproject packages differ from folders: {declared ^ found}"


def test_required_top_level_files_exist():
    for name in ("pyproject.toml", "cluster.yaml", "Makefile", "README.md", ".ci/run"):
        assert (REPO / name).exists(), name
    for name in ("platform", "models", "ops_kernels", "jobs", "serve_apps", "tests", "benchmarks"):
        assert (REPO / name).is_dir(), name


def test_every_job_has_main_and_runs_as_module():
    import importlib

    for job in sorted(p.stem for p in (REPO / "jobs").glob("*.py") if not p.stem.startswith("_")):
        mod = importlib.import_module(f"rayrec.jobs.{job}")
        assert callable(getattr(mod, "main", None)), f"rayrec.jobs.{job} has no main(argv=None)"
