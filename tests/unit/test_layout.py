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


def _load_checker():
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_layers", REPO / "scripts" / "check_layers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_layer_contracts_hold():
    checker = _load_checker()
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())
    files = checker.module_files(REPO, cfg["tool"]["setuptools"]["package-dir"])
    # the walk sees every layer, the symlinked platform folder under its own name only
    for mod in ("rayrec.models.gru4rec", "rayrec.ops_kernels.topk", "rayrec.platform.training.loop",
                "rayrec.platform.data", "rayrec.jobs.train", "rayrec.serve_apps"):
        assert mod in files, mod
    assert not any(m.startswith("rayrec.platform.platform") for m in files)
    assert checker.check(REPO) == []


def test_layer_checker_catches_lazy_and_relative_imports(tmp_path):
    checker = _load_checker()
    (tmp_path / "pyproject.toml").write_text(
        '[tool.setuptools.package-dir]\n"rayrec.models" = "models"\n"rayrec.platform" = "platform"\n'
        '[[tool.rayrec.layers]]\nname = "pure models"\nmodules = ["rayrec.models"]\n'
        'forbidden = ["rayrec.platform"]\n'
    )
    (tmp_path / "models").mkdir()
    (tmp_path / "platform").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("")
    (tmp_path / "models" / "ok.py").write_text("import torch\nfrom rayrec.models import ok\n")
    (tmp_path / "models" / "bad.py").write_text(
        "def f():\n    from rayrec.platform.training import loop\n    return loop\n")
    (tmp_path / "platform" / "x.py").write_text("from rayrec.models import bad\n")
    errors = checker.check(tmp_path)
    assert len(errors) == 1 and errors[0].startswith("models/bad.py:2: rayrec.models.bad imports "
                                                     "rayrec.platform.training"), errors
