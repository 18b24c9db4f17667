"""The package's layering, read from the source (issue: one-way layers).

Every import of s4op_micro (module level and inside functions, absolute and relative, and
importlib.import_module calls with a constant name) is collected with `ast`. The layers, bottom
to top, may import only from layers below them (or their own); nothing imports the CLI; no import
cycle between modules; no module over 500 lines; no argparse Namespace outside the CLI."""

import ast
from pathlib import Path

import s4op_micro

PKG = Path(s4op_micro.__file__).resolve().parent
LAYERS = ["core", "models", "data", "train", "quant", "codegen", "toolchain", "measure", "prune",
          "deploy", "fit", "pipeline", "cli"]
MAX_LINES = 500


def module_name(path):
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module):
    parts = module.split(".")
    if len(parts) == 1:
        return None                        # s4op_micro itself (__version__)
    return parts[1] if parts[1] != "__main__" else "cli"


def imports_of(path):
    """(imported module, line) for every import of s4op_micro in the file."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "s4op_micro"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "s4op_micro":
                continue
            for a in node.names:          # `from . import x` may name a submodule
                sub = f"{target}.{a.name}"
                found.append((sub if (PKG.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                              or (PKG.parent / sub.replace(".", "/")).is_dir() else target, node.lineno))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            arg = node.args[0] if node.args else None
            assert isinstance(arg, ast.Constant), f"{path}:{node.lineno}: importlib.import_module with a computed name"
            name = arg.value
            if name.startswith("."):
                anchor = node.args[1].value if len(node.args) > 1 else package
                dots = len(name) - len(name.lstrip("."))
                base = anchor.split(".")[:len(anchor.split(".")) - dots + 1]
                name = ".".join(base + [name.lstrip(".")])
            if name.split(".")[0] == "s4op_micro":
                found.append((name, node.lineno))
    return found


def graph():
    files = sorted(PKG.rglob("*.py"))
    assert len(files) > 30
    return {module_name(f): (f, imports_of(f)) for f in files}


def test_every_import_goes_down_the_layers():
    bad = []
    for mod, (path, imports) in graph().items():
        here = layer_of(mod)
        for target, line in imports:
            there = layer_of(target)
            if here is None or there is None or there == here:
                continue
            assert here in LAYERS and there in LAYERS, (mod, target)
            if LAYERS.index(there) > LAYERS.index(here):
                bad.append(f"{path.relative_to(PKG.parent)}:{line}: {here} imports {target} ({there} is above it)")
    assert not bad, "\n".join(bad)


def test_nothing_imports_the_cli():
    bad = [f"{mod} imports {t}" for mod, (_, imports) in graph().items() if layer_of(mod) != "cli"
           for t, _ in imports if layer_of(t) == "cli"]
    assert not bad, bad


def test_no_import_cycle_between_modules():
    g = graph()
    edges = {m: {t for t, _ in imports if t in g and t != m} for m, (_, imports) in g.items()}
    # a package's __init__ importing its own submodules is not a cycle in the layering sense: skip
    # parent -> child edges, which Python resolves by loading the child first.
    for m in edges:
        edges[m] = {t for t in edges[m] if not t.startswith(m + ".")}
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == "open":
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_modules_are_short():
    long = [(str(f.relative_to(PKG.parent)), n) for f in PKG.rglob("*.py") if (n := len(f.read_text().splitlines())) > MAX_LINES]
    assert not long, long


def test_no_argparse_outside_the_cli():
    bad = []
    for f in PKG.rglob("*.py"):
        if layer_of(module_name(f)) == "cli":
            continue
        text = f.read_text()
        if "argparse" in text or "Namespace" in text:
            bad.append(str(f.relative_to(PKG.parent)))
    assert not bad, bad


def test_the_checker_sees_function_local_and_relative_imports(tmp_path):
    """The reader itself: a function-local relative import and an importlib call are found."""
    probe = PKG / "core" / "_probe_for_test.py"
    probe.write_text("def f():\n    from ..cli import main\n    import importlib\n"
                     "    importlib.import_module('s4op_micro.deploy')\n")
    try:
        found = {t for t, _ in imports_of(probe)}
    finally:
        probe.unlink()
    assert found == {"s4op_micro.cli", "s4op_micro.deploy"}
