"""The layering contract: every module imports only from its own layer or the layers below it, and no two
packages import each other (directly or round a longer loop). Imports inside functions count too: a lazy
import is still a dependency, it only moves the failure to run time.

Today's violations are listed in ALLOWED, each with its reason; the list may only shrink. A new upward
import or cycle fails the first test; a listed one that has been removed fails the second, so the entry goes.
"""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mmfm"

# Lowest first. "mmfm" is the package root: it only re-exports lazily (importlib), so importing its
# ``__version__`` from below is harmless and it sits at the bottom.
LAYERS: list[set[str]] = [
    {"mmfm", "util", "measure", "errors"},
    {"models", "data", "tokenizer"},
    {"checkpoints"},
    {"api"},                                                # the door: create_model / from_pretrained
    {"train", "eval", "report", "frozen", "export", "deploy"},
    {"adapt", "info"},          # adaptation reuses eval's features, zero-shot head and k-shot draw; info reports on adapters
    {"evaluate"},               # the evaluation kinds and evaluate()/run_eval(): needs eval's kinds and adapt's few-shot
    {"cli", "experiment"},
]
LAYER_OF = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}

# "importer -> imported" (modules, dotted under mmfm) : why it is still there.
ALLOWED: dict[str, str] = {
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def resolve(importer: str, package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    base = base if package else base[:-1]          # a module's relative imports start at its package
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every mmfm module `path` imports, at any depth of the file (functions included)."""
    importer, package = module_name(path), is_package(path)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = resolve(importer, package, node)
            for alias in node.names:     # `from . import hybrid` imports the submodule mmfm.models.hybrid
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return {m for m in found if m == "mmfm" or m.startswith("mmfm.")}


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "mmfm"


def edges() -> set[tuple[str, str]]:
    files = sorted(SRC.rglob("*.py"))
    known = {module_name(p) for p in files}
    return {(module_name(p), target) for p in files for target in imports_of(p, known)}


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def violations() -> dict[str, str]:
    """``"a -> b"``: what is wrong with it, for every import that goes up a layer or closes a cycle.

    Any loop that crosses layers contains an upward import, reported as such; a loop between packages of one
    layer (train <-> report, say) has none, so those are found by following same-layer imports back round."""
    found = edges()
    same_layer: dict[str, set[str]] = {}
    for a, b in found:
        pa, pb = package_of(a), package_of(b)
        assert pa in LAYER_OF and pb in LAYER_OF, f"package {pa!r} or {pb!r} has no layer: add it to LAYERS"
        if pa != pb and LAYER_OF[pa] == LAYER_OF[pb]:
            same_layer.setdefault(pa, set()).add(pb)
    bad = {}
    for a, b in sorted(found):
        pa, pb = package_of(a), package_of(b)
        if pa == pb:
            continue
        if LAYER_OF[pb] > LAYER_OF[pa]:
            bad[f"{a} -> {b}"] = f"upward: {pa} (layer {LAYER_OF[pa]}) imports {pb} (layer {LAYER_OF[pb]})"
        elif LAYER_OF[pb] == LAYER_OF[pa] and pa in reachable(same_layer, pb):
            bad[f"{a} -> {b}"] = f"cycle: {pb} imports {pa} back"
    return bad


def test_no_new_upward_import_or_cycle():
    new = {edge: why for edge, why in violations().items() if edge not in ALLOWED}
    assert not new, "imports that break the layers (see tests/test_layering.py):\n" + "\n".join(
        f"  {edge}: {why}" for edge, why in sorted(new.items()))


def test_allowlist_only_shrinks():
    gone = sorted(set(ALLOWED) - set(violations()))
    assert not gone, "fixed, so remove from ALLOWED in tests/test_layering.py:\n" + "\n".join(f"  {e}" for e in gone)


def private_uses(path: Path, known: set[str]) -> set[str]:
    """``"a -> b._name"`` for each private name of another package's module that `path` reaches for:
    ``from b import _name`` or ``b._name`` on a module bound by an import. Such a name is no contract:
    the owner may change it (or its error text) without knowing anyone depends on it."""
    importer, package = module_name(path), is_package(path)
    tree = ast.parse(path.read_text(), str(path))
    bound: dict[str, str] = {}
    found: set[str] = set()

    def private(name: str) -> bool:
        return name.startswith("_") and not name.startswith("__")

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = resolve(importer, package, node)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in known:
                    bound[alias.asname or alias.name] = sub
                elif private(alias.name) and target.startswith("mmfm"):
                    found.add(f"{importer} -> {target}.{alias.name}")
        elif isinstance(node, ast.Import):
            bound.update({alias.asname: alias.name for alias in node.names if alias.asname and alias.name in known})
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                and private(node.attr)):
            found.add(f"{importer} -> {bound[node.value.id]}.{node.attr}")
    return {use for use in found
            if package_of(use.split(" -> ")[0]) != package_of(use.split(" -> ")[1].rsplit(".", 1)[0])}


def test_no_package_uses_another_packages_private_names():
    files = sorted(SRC.rglob("*.py"))
    known = {module_name(p) for p in files}
    uses = sorted(use for p in files for use in private_uses(p, known))
    assert not uses, "private names used across packages (give the owner a public function):\n" + "\n".join(
        f"  {use}" for use in uses)


def test_the_checker_sees_lazy_relative_and_absolute_imports(tmp_path):
    pkg = tmp_path / "mmfm" / "models"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import clip\n")
    (pkg / "clip.py").write_text(
        "import mmfm.util\n"
        "def f():\n"
        "    from ..cli import main\n"
        "    from mmfm.checkpoints import hub\n")
    known = {"mmfm.models", "mmfm.models.clip"}
    global SRC
    saved, SRC = SRC, tmp_path / "mmfm"
    try:
        assert imports_of(pkg / "clip.py", known) == {"mmfm.util", "mmfm.cli", "mmfm.checkpoints"}
        assert imports_of(pkg / "__init__.py", known) == {"mmfm.models.clip"}
        (pkg / "vit.py").write_text("from ..checkpoints import hub\nfrom ..util.hf import _quiet\nhub._probe()\n")
        assert private_uses(pkg / "vit.py", known | {"mmfm.checkpoints.hub"}) == {
            "mmfm.models.vit -> mmfm.checkpoints.hub._probe", "mmfm.models.vit -> mmfm.util.hf._quiet"}
    finally:
        SRC = saved
