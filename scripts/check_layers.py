"""Check the layer contracts of ``[[tool.rayrec.layers]]`` in pyproject.toml (``make lint``).

Each contract names ``modules`` (dotted prefixes of the ``rayrec`` namespace) and the
``forbidden`` prefixes none of them may import.  Every ``import`` / ``from ... import`` in the
source files counts, including imports inside functions (lazy imports are still
dependencies).  The source folders come from ``[tool.setuptools.package-dir]``, so the check
needs no installed package.  Exit status 1 lists every violation as ``file:line``.

    python scripts/check_layers.py [--root DIR]
"""

from __future__ import annotations

import argparse
import ast
import sys
import tomllib
from pathlib import Path


def module_files(root: Path, package_dir: dict[str, str]) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file under the mapped folders (a file
    reachable through two mappings, e.g. a symlinked folder, counts under the longest one)."""
    by_file: dict[Path, str] = {}
    for pkg, folder in sorted(package_dir.items(), key=lambda kv: len(kv[0])):
        base = root / folder
        for f in base.rglob("*.py"):
            rel = f.relative_to(base)
            if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
                continue
            parts = [p for p in rel.with_suffix("").parts if p != "__init__"]
            by_file[f.resolve()] = ".".join([pkg, *parts])  # longer mappings overwrite
    return {name: f for f, name in by_file.items()}


def imports_of(path: Path, module: str) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((a.name, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this module's package
                base = module.split(".")[: -node.level] if not path.name == "__init__.py" else \
                    module.split(".")[: len(module.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, node.lineno))
            found.extend((f"{target}.{a.name}", node.lineno) for a in node.names)
    return found


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def check(root: Path) -> list[str]:
    cfg = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    package_dir = cfg["tool"]["setuptools"]["package-dir"]
    contracts = cfg["tool"]["rayrec"]["layers"]
    files = module_files(root, package_dir)
    errors: list[str] = []
    for c in contracts:
        for mod, path in sorted(files.items()):
            if not any(_under(mod, m) for m in c["modules"]):
                continue
            if any(_under(mod, m) for m in c.get("except", [])):
                continue
            seen: set[int] = set()
            for target, line in imports_of(path, mod):
                bad = next((f for f in c["forbidden"] if _under(target, f)), None)
                if bad is not None and line not in seen:  # one report per import statement
                    seen.add(line)
                    errors.append(f"{path.relative_to(root)}:{line}: {mod} imports {target} "
                                  f"(contract: {c['name']})")
    return sorted(set(errors))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(Path(__file__).resolve().parents[1]))
    args = p.parse_args(argv)
    errors = check(Path(args.root))
    for e in errors:
        print(e)
    n = len(tomllib.loads((Path(args.root) / "pyproject.toml").read_text())["tool"]["rayrec"]["layers"])
    print(f"layer contracts: {n} checked, {len(errors)} violation(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
