"""handprop uses its libraries (Lightning, torch, TensorBoard, torchmetrics, Hydra) through
their public API. Every private name the source reaches for on their objects -- an
attribute, a method it calls or overrides, a module or name it imports -- must be listed,
with the reason, in docs/internals.md ("Private names"); any other fails here, with its
file and line. A library's release may move a private name without notice: this test is
where that shows."""

import ast
import importlib
import inspect
import re
import textwrap
from pathlib import Path

import pytest

import handprop

SRC = Path(handprop.__file__).parent
INTERNALS = Path(__file__).resolve().parents[1] / "docs" / "internals.md"
# Python's own API that is public despite its underscore: namedtuple's methods and fields
PYTHON_PUBLIC = {"_replace", "_fields", "_asdict", "_make", "_field_defaults"}


def _private(name: str) -> bool:
    """A single-underscore name (not a dunder, not a Hydra key such as ``_target_``)."""
    return name.startswith("_") and not name.endswith("_") and name not in PYTHON_PUBLIC


def _own_names(trees: dict[Path, ast.Module]) -> set[str]:
    """Every private name handprop defines itself: functions, classes, the attributes and
    variables it assigns, import aliases."""
    names = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _on_self(node):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.alias) and node.asname:
                names.add(node.asname)
    return {n for n in names if _private(n)}


def _framework_privates(cls: type) -> set[str]:
    """The private names a class's library bases define: their class attributes and
    methods, and the attributes their own source assigns on ``self``."""
    names = set()
    for base in cls.__mro__[1:]:
        if base is object or base.__module__.startswith("handprop"):
            continue
        names |= {n for n in vars(base) if _private(n)}
        try:
            source = inspect.getsource(base)
        except (OSError, TypeError):
            continue
        names |= {n for n in re.findall(r"self\.(_\w+)\s*(?::[^=\n]*)?=(?!=)", source) if _private(n)}
    return names


def private_uses(files: dict[str, str], module_of=None) -> list[tuple[str, int, str]]:
    """(file, line, name) of every private name of another library the sources use.
    ``files``: file name -> source; ``module_of``: file name -> its imported module, for
    the classes' library bases (None: attributes and imports only)."""
    trees = {name: ast.parse(source) for name, source in files.items()}
    own = _own_names(trees)
    found = []
    for name, tree in trees.items():
        module = module_of(name) if module_of else None
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                parts = (node.module or "").split(".")
                found += [(name, node.lineno, p) for p in parts if _private(p)]
                found += [(name, node.lineno, a.name) for a in node.names if _private(a.name)]
            elif isinstance(node, ast.Import):
                found += [(name, node.lineno, p) for a in node.names for p in a.name.split(".") if _private(p)]
            elif isinstance(node, ast.ClassDef) and module is not None:
                cls = getattr(module, node.name, None)
                theirs = _framework_privates(cls) if inspect.isclass(cls) else set()
                for inner in ast.walk(node):  # what the class reads, writes or overrides of its bases
                    if isinstance(inner, ast.FunctionDef) and inner.name in theirs:
                        found.append((name, inner.lineno, inner.name))
                    elif isinstance(inner, ast.Attribute) and inner.attr in theirs and _on_self(inner):
                        found.append((name, inner.lineno, inner.attr))
            if isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own and not _on_self(node):
                found.append((name, node.lineno, node.attr))
    return sorted(set(found))


def _on_self(node: ast.Attribute) -> bool:
    """``self.x``, ``cls.x`` or ``super().x``: an attribute of the class being defined."""
    value = node.value
    if isinstance(value, ast.Name):
        return value.id in ("self", "cls")
    return isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super"


def listed_exceptions() -> set[str]:
    """The names docs/internals.md lists under "Private names": the first column of its table."""
    text = INTERNALS.read_text()
    section = text.split("## Private names", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\|\s*`([^`]+)`", section, flags=re.M))


def _sources() -> tuple[dict[str, str], callable]:
    files = {str(p.relative_to(SRC)): p.read_text() for p in sorted(SRC.rglob("*.py"))}

    def module_of(name: str):
        dotted = "handprop." + name.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
        return importlib.import_module(dotted)

    return files, module_of


def test_the_source_uses_no_private_name_of_a_library_but_those_listed():
    uses = private_uses(*_sources())
    allowed = listed_exceptions()
    unlisted = [f"src/handprop/{file}:{line}: {name}" for file, line, name in uses if name not in allowed]
    assert not unlisted, "private names of Lightning, torch or TensorBoard, not in docs/internals.md:\n" + "\n".join(
        unlisted
    )
    unused = allowed - {name for _, _, name in uses}
    assert not unused, f"docs/internals.md lists private names the source no longer uses: {sorted(unused)}"


@pytest.mark.parametrize(
    "source, name",
    [
        ("trainer.fit_loop.epoch_loop._batches_that_stepped = 3", "_batches_that_stepped"),
        ("optimizer._opt_called = True", "_opt_called"),
        ("writer._get_file_writer().add_summary(s)", "_get_file_writer"),
        ("from lightning.fabric.utilities.cloud_io import _is_local_file_protocol", "_is_local_file_protocol"),
        ("import torch._inductor.config", "_inductor"),
        ("x = torch._foreach_norm(grads)", "_foreach_norm"),
    ],
)
def test_it_finds_each_kind_of_private_use(source, name):
    assert [found for _, _, found in private_uses({"x.py": source})] == [name]


def test_it_finds_a_private_hook_overridden_and_a_private_attribute_written_on_self():
    """A subclass of a Lightning callback that overrides one of its private methods, and a
    LightningModule that reads its private trainer reference."""
    source = textwrap.dedent(
        """
        import lightning as L
        from lightning.pytorch.callbacks import ModelCheckpoint

        class Keep(ModelCheckpoint):
            def _should_remove_checkpoint(self, trainer, previous, current):
                return False

        class Module(L.LightningModule):
            def attached(self):
                return self._trainer is not None

            def own(self):
                self._mine = 1
                return self._mine
        """
    )
    namespace: dict = {}
    exec(compile(source, "x.py", "exec"), namespace)  # the classes, for their bases
    module = type("Module", (), namespace)
    uses = private_uses({"x.py": source}, lambda _: module)
    assert [found for _, _, found in uses] == ["_should_remove_checkpoint", "_trainer"]


def test_namedtuple_methods_and_hydra_keys_are_public():
    source = "a = b._replace(x=1)\nc = LayerSaved._fields\nd = node._target_"
    assert private_uses({"x.py": source}) == []
