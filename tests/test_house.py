"""House rules of ARCHITECTURE.md, pinned: imports point down only, source files stay under 500 lines,
no private name is imported across modules.

The source is parsed with ``ast``, never imported, so every import counts: module-level,
function-level, inside ``try``/``if``, relative ones and ``from cryolens import x``.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 500

#: The layers, low to high, as in ARCHITECTURE.md's table. Each row: the layer, the top-level names
#: under ``cryolens/`` that belong to it (``__init__`` is ``cryolens/__init__.py``; ``None``: every
#: name no other row claims; ``__main__`` would be ``cryolens/__main__.py``), and the layers it may import
#: besides its own.
LAYERS = [
    # layer     top-level names under cryolens/                               may import
    ("core",    {"core", "io", "errors", "params", "particles", "__init__"},   set()),
    ("stage",   None,                                                          {"core"}),
    ("compute", {"compute"},                                                   {"core"}),
    ("jobs",    {"jobs"},                                                      {"core", "stage", "compute"}),
    ("project", {"project"},                                                   {"core", "stage", "compute", "jobs"}),
    ("cli",     {"cli", "report", "__main__"},                       {"core", "stage", "compute", "jobs", "project"}),
]
# "stage" is motion, ctf, refine, reconstruct, simulate, postprocess, select, picking, extract, class2d,
# abinitio, class3d, ...: a stage may import another stage, never compute, jobs, project or cli.


def layer_of(module: str) -> str:
    """The layer of a dotted module name under ``cryolens`` (``cryolens.ctf.fit`` -> ``stage``)."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for name, members, _ in LAYERS:
        if members is not None and top in members:
            return name
    return "stage"


def may_import(layer: str) -> set[str]:
    return {layer} | next(allowed for name, _, allowed in LAYERS if name == layer)


def private(name: str) -> bool:
    """A leading-underscore name that is not a dunder (``_fit`` yes, ``__version__`` no)."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


# -- reading a source tree (``src`` holds the ``cryolens`` package) ------------------------------------

class Tree:
    def __init__(self, src: Path):
        self.src = src

    def files(self) -> list[Path]:
        return sorted((self.src / "cryolens").rglob("*.py"))

    def module(self, path: Path) -> str:
        """``src/cryolens/ctf/fit.py`` -> ``cryolens.ctf.fit``; a package's ``__init__.py`` -> the package."""
        parts = list(path.relative_to(self.src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        return ".".join(parts)

    def package(self, path: Path) -> str:
        """The package that relative imports in ``path`` start from."""
        mod = self.module(path)
        return mod if path.name == "__init__.py" else mod.rpartition(".")[0]

    def is_module(self, dotted: str) -> bool:
        """Whether ``dotted`` names a module or package of the tree."""
        path = self.src.joinpath(*dotted.split("."))
        return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()

    def where(self, path: Path, line: int) -> str:
        return f"{path.relative_to(self.src.parent)}:{line}"

    def source_of(self, node: ast.ImportFrom, path: Path) -> str:
        """The absolute module a ``from X import ...`` reads from (relative imports resolved)."""
        if not node.level:
            return node.module or ""
        package = self.package(path).split(".")
        base = package[:len(package) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))

    def imports(self, path: Path) -> list[tuple[int, str, str | None, str | None, str | None]]:
        """Every import of a ``cryolens`` module in ``path``: ``(line, module, source, name, bound)``.

        ``module`` is what is imported (for ``from M import x``: ``M.x`` when ``x`` is a submodule,
        else ``M``); for ``from`` imports ``source`` is ``M`` and ``name`` is ``x`` (``None`` for
        ``import M``); ``bound`` is the local name when it is bound to a cryolens module, else None."""
        found = []
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found += [(node.lineno, a.name, None, None, a.asname) for a in node.names
                          if a.name.split(".")[0] == "cryolens"]
            elif isinstance(node, ast.ImportFrom):
                source = self.source_of(node, path)
                if source.split(".")[0] != "cryolens":
                    continue
                for a in node.names:
                    sub = f"{source}.{a.name}"
                    is_mod = self.is_module(sub)
                    found.append((node.lineno, sub if is_mod else source, source, a.name,
                                  (a.asname or a.name) if is_mod else None))
        return found

    # -- the rules, each a list of "file:line: what" -----------------------------------------------

    def upward_imports(self) -> list[str]:
        bad = []
        for path in self.files():
            importer = self.module(path)
            layer = layer_of(importer)
            for line, target, *_ in self.imports(path):
                if layer_of(target) not in may_import(layer):
                    bad.append(f"{self.where(path, line)}: {importer} ({layer}) imports {target} "
                               f"({layer_of(target)})")
        return list(dict.fromkeys(bad))

    def long_files(self) -> list[str]:
        return [f"{self.where(p, n)}: {n} lines (limit {MAX_LINES})" for p in self.files()
                if (n := len(p.read_text().splitlines())) > MAX_LINES]

    def private_imports(self) -> list[str]:
        """``from cryolens.x import _name`` from another module, ``import cryolens.x._y`` from outside
        ``cryolens.x``, and ``m._name`` where ``m`` is a cryolens module imported here. A private
        submodule imported from inside its own package is allowed."""
        bad = []
        for path in self.files():
            importer, package = self.module(path), self.package(path)
            aliases = {}
            for line, target, source, name, bound in self.imports(path):
                if bound:
                    aliases[bound] = target
                if name is None:
                    parts = target.split(".")
                    for i, part in enumerate(parts):
                        if private(part) and not importer.startswith(".".join(parts[:i]) + "."):
                            bad.append(f"{self.where(path, line)}: {importer} imports private module {target}")
                elif private(name) and not (target == f"{source}.{name}" and source == package):
                    bad.append(f"{self.where(path, line)}: {importer} imports {name} from {source}")
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and private(node.attr)
                        and aliases.get(node.value.id, importer) != importer):
                    bad.append(f"{self.where(path, node.lineno)}: {importer} uses "
                               f"{aliases[node.value.id]}.{node.attr}")
        return list(dict.fromkeys(bad))


# -- the rules on cryolens ---------------------------------------------------------------------------

def test_imports_point_down_only():
    """core/io import no stage, compute, jobs, project or cli; stages import no compute, jobs, project or
    cli; compute imports no stage, jobs, project or cli; jobs import no project or cli; project no cli."""
    bad = Tree(SRC).upward_imports()
    assert not bad, "imports that point up a layer (see the LAYERS table in this file):\n" + "\n".join(bad)


def test_no_source_file_over_500_lines():
    bad = Tree(SRC).long_files()
    assert not bad, "source files over the limit (split them by what they do):\n" + "\n".join(bad)


def test_no_private_name_imported_across_modules():
    bad = Tree(SRC).private_imports()
    assert not bad, ("private names used across modules (make them public with a docstring, or move them):\n"
                     + "\n".join(bad))


def test_no_submodule_shadows_a_package_export():
    """A submodule named like one of its package's exports would replace that export once anything imports the
    submodule (``cryolens.refine.auto_refine`` was both a module and the function it exports)."""
    bad = []
    for init in (SRC / "cryolens").rglob("__init__.py"):
        tree = ast.parse(init.read_text())
        exports = next((ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                        and any(getattr(t, "id", None) == "__all__" for t in node.targets)), [])
        for name in exports:
            if (init.parent / f"{name}.py").exists() or (init.parent / name / "__init__.py").exists():
                bad.append(f"{init.parent.relative_to(SRC)}: {name}")
    assert not bad, "exports that share their name with a submodule (rename the module):\n" + "\n".join(bad)


# -- the checker itself, on a planted tree -----------------------------------------------------------

def test_the_checks_find_planted_violations(tmp_path: Path):
    files = {
        "__init__.py": '__version__ = "0"\n',
        "errors.py": "",
        "core/__init__.py": "",
        "core/fft.py": "from .util import helper\n\ndef _private():\n    pass\n",
        "core/util.py": "def helper():\n    from cryolens import jobs\n",
        "ctf/__init__.py": "from . import _impl\nfrom cryolens import __version__\n",
        "ctf/_impl.py": "from cryolens.core.fft import fft2\n",
        "ctf/fit.py": "from ..core import fft\nfrom ..refine.search import go\n\ndef f():\n    return fft._private()\n",
        "refine/__init__.py": "",
        "refine/search.py": "import cryolens.ctf._impl\n",
        "jobs/__init__.py": "",
        "jobs/ctf.py": "try:\n    from cryolens.project.backends import get\nexcept ImportError:\n    pass\n",
        "project/__init__.py": "",
        "project/db.py": "from cryolens.core.fft import _private\n" + "x = 1\n" * MAX_LINES,
        "cli/__init__.py": "from cryolens.project import db\nfrom cryolens.jobs import ctf\n",
    }
    for name, text in files.items():
        (tmp_path / "src" / "cryolens" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / "cryolens" / name).write_text(textwrap.dedent(text))
    tree = Tree(tmp_path / "src")
    assert tree.upward_imports() == [
        "src/cryolens/core/util.py:2: cryolens.core.util (core) imports cryolens.jobs (jobs)",
        "src/cryolens/jobs/ctf.py:2: cryolens.jobs.ctf (jobs) imports cryolens.project.backends (project)",
    ]
    n = MAX_LINES + 1
    assert tree.long_files() == [f"src/cryolens/project/db.py:{n}: {n} lines (limit {MAX_LINES})"]
    assert tree.private_imports() == [
        "src/cryolens/ctf/fit.py:5: cryolens.ctf.fit uses cryolens.core.fft._private",
        "src/cryolens/project/db.py:1: cryolens.project.db imports _private from cryolens.core.fft",
        "src/cryolens/refine/search.py:1: cryolens.refine.search imports private module cryolens.ctf._impl",
    ]
