"""What every executor gets besides its artifacts and parameters, and helpers
executors share: Beam pipelines from the user's args and user code loading.

An executor is a plain function

    def run(inputs: dict[str, list[Artifact]], outputs: dict[str, list[Artifact]],
            params: <the component's Params dataclass>, ctx: ExecutionContext) -> None

It writes its files under each output artifact's `uri` (the directory exists)
and may set their properties. It raises ExecutorError for bad input, before
writing anything. It never talks to MLMD or the orchestrator.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import tempfile
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from conveyor import fs
from conveyor.errors import ExecutorError

__all__ = [
    "ExecutionContext",
    "load_user_function",
    "import_user_file",
    "snapshot_import_path",
    "user_code_files",
    "fingerprint_files",
    "skip_autograph_for_libraries",
    "use_keras_2",
]


@dataclasses.dataclass
class ExecutionContext:
    """Run-time facts an executor may need."""

    component_id: str
    pipeline_name: str = "adhoc"
    pipeline_root: str = ""
    execution_id: int = 0
    beam_pipeline_args: list[str] = dataclasses.field(default_factory=list)
    tmp_dir: str = ""
    # Set when the run was stopped: an executor checks it before a step that
    # cannot be undone (the Pusher's rename into the serving directory).
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)

    def check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise ExecutorError(f"{self.component_id}: the run was stopped; nothing more is done.")

    def beam_pipeline(self) -> Any:
        """A Beam pipeline on the user's runner; the in-memory DirectRunner by
        default. Flags Conveyor does not know pass through untouched."""
        import apache_beam as beam
        from apache_beam.options.pipeline_options import PipelineOptions

        from conveyor.components import arrow_coders, beam_tuning

        beam_tuning.apply()
        arrow_coders.register()
        fs.share_beam_s3_clients()
        # Workers of a multi-process or remote runner import our DoFns from the
        # installed package; they must not depend on the parent's memory.
        return beam.Pipeline(options=PipelineOptions(list(self.beam_pipeline_args)))

    def error(self, message: str) -> ExecutorError:
        return ExecutorError(f"{self.component_id}: {message}")


class _UserCodeFinder(importlib.abc.MetaPathFinder):
    """Finds user modules for the import system, instead of their folders
    going on sys.path for good.

    A module file loaded by name (`import_user_file`) is found here, so its
    load is an ordinary import: the import system's per-module lock makes a
    second thread loading it wait for the first's exec, and a failed exec
    leaves nothing in sys.modules. A top-level name that is a `.py` file or
    a package beside one of those files (the module's siblings, imported
    when it loads or later from inside a function) is found in their
    folders, the latest loaded first, as sys.path[0] did."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.files: dict[str, str] = {}  # module name -> its file
        self.origins: dict[str, str] = {}  # module name -> the file its file is a snapshot of
        self.folders: list[str] = []  # where siblings are found, the latest loaded first
        self.siblings: dict[str, str] = {}  # sibling name -> fingerprint of its files when last seen

    def find_spec(self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if path is not None:
            return None  # a submodule: its package's __path__ finds it
        with self.lock:
            file, origin, folders = self.files.get(fullname), self.origins.get(fullname), list(self.folders)
        if file:
            return _file_spec(fullname, file, origin)
        for folder in folders:
            package = os.path.join(folder, fullname)
            if os.path.isfile(os.path.join(package, "__init__.py")):
                return importlib.util.spec_from_file_location(
                    fullname, os.path.join(package, "__init__.py"), submodule_search_locations=[package])
            if os.path.isfile(package + ".py"):
                return importlib.util.spec_from_file_location(fullname, package + ".py")
        return None

    def refresh(self, folder: str, code_files: Sequence[str], base: str) -> None:
        """Before a module in `folder` loads: its folder first for siblings,
        and a sibling already imported whose files (among `code_files`,
        relative to `base`) changed since is dropped from sys.modules, so
        the module imports the code as it is now."""
        by_name: dict[str, list[str]] = {}
        for f in code_files:
            rel = fs.relpath(f, base)
            if rel.endswith(".py") and not rel.startswith(".."):
                by_name.setdefault(rel.split("/")[0].removesuffix(".py"), []).append(f)
        fingerprints = {name: fingerprint_files(files) for name, files in by_name.items()}
        with self.lock:
            if folder in self.folders:
                self.folders.remove(folder)
            self.folders.insert(0, folder)
            for name, fingerprint in fingerprints.items():
                seen = self.siblings.get(name)
                if seen is not None and seen != fingerprint:
                    for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                        sys.modules.pop(loaded, None)
                self.siblings[name] = fingerprint


_finder: _UserCodeFinder | None = None
_finder_lock = threading.Lock()


def _user_code_finder() -> _UserCodeFinder:
    """The one finder, registered on the first user module load (never on
    `import conveyor`)."""
    global _finder
    with _finder_lock:
        if _finder is None:
            _finder = _UserCodeFinder()
            sys.meta_path.insert(0, _finder)
        return _finder


# Dotted names are not found through the finder (their package may not be
# importable): loaded one thread at a time.
_dotted_lock = threading.Lock()
_dotted: dict[str, ModuleType] = {}


def _file_spec(name: str, path: str, origin: str | None = None,
               search: list[str] | None = None) -> importlib.machinery.ModuleSpec:
    """The spec of module `name` whose code is the file `path`; with
    `origin`, a snapshot of that file: the module's `__file__` is `origin`,
    so paths it builds from it (data beside it) point where they did, while
    its code (and tracebacks) come from the snapshot. `search`: its
    submodule search locations, for a package."""
    spec = importlib.util.spec_from_file_location(
        name, origin or path, loader=importlib.machinery.SourceFileLoader(name, path) if origin else None,
        submodule_search_locations=search)
    assert spec is not None and spec.loader is not None
    return spec


def _exec_new(name: str, spec: importlib.machinery.ModuleSpec) -> ModuleType:
    """A module executed from `spec` and put into sys.modules as `name`
    (before it executes: its dataclasses look their module up meanwhile),
    or nothing left there when its code raised."""
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        assert spec.loader is not None
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def import_user_file(name: str, path: str, code_files: Sequence[str] | None = None,
                     origin: str | None = None) -> ModuleType:
    """The local Python file `path` imported as module `name` (once: a
    second call returns the same module; two threads at once get one fully
    executed module). Its siblings import as they would beside a script,
    without its folder going on sys.path; `code_files` are the module's
    local imports (default: `user_code_files(path)`), so one that changed
    since it was last imported is imported again. `origin`: the file `path`
    is a snapshot of, the module's `__file__` (see `_file_spec`). Raises
    what the module's code raised."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    finder = _user_code_finder()
    finder.refresh(folder, user_code_files(path) if code_files is None else code_files, folder)
    if "." not in name:
        with finder.lock:
            finder.files[name] = path
            if origin:
                finder.origins[name] = origin
            else:
                finder.origins.pop(name, None)
        return importlib.import_module(name)
    with _dotted_lock:
        if name not in _dotted:
            _dotted[name] = _exec_new(name, _file_spec(name, path, origin))
        return _dotted[name]


# An import path whose module runs from a snapshot (see snapshot_import_path):
# the fields, joined by a character no import path or file name holds.
_SNAPSHOT_SEPARATOR = "\t"
_snapshot_lock = threading.RLock()


def snapshot_import_path(import_path: str, snapshot: str, origin: str) -> str:
    """An import path 'package.module.function' whose module is to run from
    `snapshot`, a copy of its file `origin` beside the local modules it
    imports (conveyor.pipeline.driver.stage_user_code); `load_user_function`
    takes it where it takes an import path."""
    return _SNAPSHOT_SEPARATOR.join((import_path, snapshot, origin))


def _split_import_path(value: str) -> tuple[str, str, str]:
    """(import path, snapshot file or "", original file or "")."""
    import_path, _, rest = value.partition(_SNAPSHOT_SEPARATOR)
    snapshot, _, origin = rest.partition(_SNAPSHOT_SEPARATOR)
    return import_path, snapshot, origin


def _import_snapshot(module_name: str, snapshot: str, origin: str) -> ModuleType:
    """Module `module_name` run from its snapshot: the code the cache key
    hashed, not the file as it may be now. Top-level module: as a module
    file, its siblings found beside the snapshot. Module of a package (or a
    package): the snapshot's folder becomes a package of its own (named by
    its content), searched before the original folder, so package-relative
    imports load their snapshots; other names of the real package (what its
    __init__ defines) are looked up on it."""
    if fs.is_remote(snapshot):
        snapshot = _local_copy(snapshot)
    files = user_code_files(snapshot)
    # Named by the code and what it stands for: two packages holding the same
    # files are still two modules, each with its own __file__ and package.
    digest = hashlib.sha256(f"{fingerprint_files(files)}\0{module_name}\0{origin}".encode()).hexdigest()[:16]
    package, _, leaf = module_name.rpartition(".")
    is_package = os.path.basename(snapshot) == "__init__.py"
    if not package and not is_package:
        return import_user_file(f"conveyor_user_{leaf}_{digest}", snapshot, files, origin=origin or None)
    name = f"conveyor_snapshot_{digest}"
    folder = os.path.dirname(os.path.abspath(snapshot))
    search = [folder] + ([os.path.dirname(origin)] if origin else [])
    with _snapshot_lock:
        if is_package:
            return sys.modules.get(name) or _exec_new(name, _file_spec(name, snapshot, origin or None, search))
        if name not in sys.modules:
            stand_in = ModuleType(name)
            stand_in.__path__ = search
            stand_in.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
            stand_in.__spec__.submodule_search_locations = search
            stand_in.__getattr__ = _package_attribute(name, folder, package)  # type: ignore[method-assign]
            sys.modules[name] = stand_in
        child = f"{name}.{leaf}"
        if child not in sys.modules:
            setattr(sys.modules[name], leaf, _exec_new(child, _file_spec(child, snapshot, origin or None)))
        return sys.modules[child]


def _package_attribute(name: str, folder: str, real_package: str) -> Any:
    """`__getattr__` of a snapshot's stand-in package: a module of the
    snapshot (`from . import helpers`), imported from it, else the real
    package's attribute."""

    def attribute(attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        if os.path.isfile(os.path.join(folder, f"{attr}.py")) or os.path.isfile(
                os.path.join(folder, attr, "__init__.py")):
            return importlib.import_module(f"{name}.{attr}")
        return getattr(importlib.import_module(real_package), attr)

    return attribute


def _load_module_file(path: str, component_id: str) -> ModuleType:
    if not fs.isfile(path):
        raise ExecutorError(
            f"{component_id}: module file {path!r} does not exist. Pass module_file= the path of a "
            f"Python file, or an import path 'package.module.function'."
        )
    source = fs.read_text(path)
    try:
        compile(source, path, "exec")
    except SyntaxError as e:
        raise ExecutorError(
            f"{component_id}: module file {path} has a syntax error at line {e.lineno}: {e.msg}. "
            f"Fix the file and run again."
        ) from e
    # Named by the content of the module and its local imports: an edit to
    # either loads it again.
    files = user_code_files(path)
    digest = fingerprint_files(files)[:12]
    name = f"conveyor_user_{os.path.splitext(fs.basename(path))[0]}_{digest}"
    base = fs.dirname(fs.abspath(path))
    if fs.is_remote(path):
        path = _local_copy(path)
    local_base = os.path.dirname(os.path.abspath(path))
    try:
        return import_user_file(name, path, [os.path.join(local_base, *fs.relpath(f, base).split("/"))
                                             for f in files])
    except Exception as e:
        raise ExecutorError(
            f"{component_id}: importing module file {path} failed: {type(e).__name__}: {e}"
        ) from e


def _local_copy(path: str) -> str:
    """A module file on an object store, with the local modules it imports,
    copied to a local folder named by their content (Python imports from
    local files only); the local path of the module file."""
    files = user_code_files(path)
    folder = os.path.join(tempfile.gettempdir(), "conveyor-code", fingerprint_files(files)[:16])
    base = fs.dirname(path)
    for f in files:
        target = os.path.join(folder, *fs.relpath(f, base).split("/"))
        if not os.path.exists(target):
            # Several workers may fetch the same code at once: each file
            # appears whole or not at all.
            partial = f"{target}.{os.getpid()}.{threading.get_ident()}.partial"
            fs.copy(f, partial)
            os.replace(partial, target)
    return os.path.join(folder, fs.basename(path))


def load_user_function(
    component_id: str, function_name: str, module_file: str | None = None, import_path: str | None = None
) -> Any:
    """The user's function `function_name` from a module file, or the function
    named by an import path 'package.module.function'."""
    if module_file:
        module = _load_module_file(module_file, component_id)
        where = f"module file {module_file}"
    elif import_path:
        import_path, snapshot, origin = _split_import_path(import_path)
        mod_name, _, attr = import_path.rpartition(".")
        try:
            module = _import_snapshot(mod_name, snapshot, origin) if snapshot else importlib.import_module(mod_name)
        except ImportError as e:
            raise ExecutorError(
                f"{component_id}: cannot import {mod_name!r} from {import_path!r}: {e}"
            ) from e
        function_name = attr
        where = f"module {mod_name}"
    else:
        raise ExecutorError(f"{component_id}: give module_file= or a function import path.")
    fn = getattr(module, function_name, None)
    if not callable(fn):
        names = [n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")]
        from conveyor.errors import closest

        raise ExecutorError(
            f"{component_id}: {where} has no function {function_name!r}."
            f"{closest(function_name, names)} Define `def {function_name}(...)` in it."
        )
    return fn


def user_code_files(module_file: str) -> list[str]:
    """The module file and the local modules it imports (recursively): the
    files whose content goes into a component's cache key. Local paths or
    object-store URIs alike."""
    found: list[str] = []
    pending = [fs.abspath(module_file)]
    while pending:
        path = pending.pop()
        if path in found or not fs.isfile(path):
            continue
        found.append(path)
        if not path.endswith(".py"):
            continue  # A data file (ExampleGen's input, a schema): content only, no imports to follow.
        directory = fs.dirname(path)
        try:
            tree = ast.parse(fs.read_text(path), path)
        except (SyntaxError, UnicodeDecodeError):
            continue  # The executor reports it with file and line.
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level:
                base = node.module or ""
                names = [base] if base else [a.name for a in node.names]
            for name in names:
                rel = name.replace(".", "/")
                for candidate in (rel + ".py", rel + "/__init__.py"):
                    full = fs.join(directory, *candidate.split("/"))
                    if fs.isfile(full):
                        pending.append(full)
    return sorted(found)


def fingerprint_files(paths: Sequence[str]) -> str:
    """sha256 over the names and contents of files."""
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(fs.basename(path).encode())
        content = hashlib.sha256()
        # In blocks: these may be large files.
        for block in fs.iter_chunks(path, 1 << 20):
            content.update(block)
        h.update(content.digest())
    return h.hexdigest()


def use_keras_2() -> None:
    """One Keras for every component: tf.Transform's layers are Keras 2
    (tf_keras), so `tf.keras` must be Keras 2 too, or TFMA does not see the
    models as Keras and skips their compiled metrics. TensorFlow decides
    when `tf.keras` is first touched; this runs before any executor (not
    on `import conveyor`). A process that touched `tf.keras` before running
    a pipeline in-process should set TF_USE_LEGACY_KERAS=1 itself, or use
    LocalRunner(launcher="process")."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


# Libraries whose code autograph need not convert (see skip_autograph_for_libraries).
_AUTOGRAPH_SKIPPED = ("tf_keras", "tensorflow_transform")


def skip_autograph_for_libraries() -> None:
    """Tell autograph to leave tf_keras' and tf.Transform's own code alone.

    TensorFlow's autograph skips the library `keras` but not `tf_keras`, the
    name Keras 2 has since TF 2.16 (and what tf.Transform's layer is built
    on). Converting Keras internals line by line costs ~20 s per traced
    function (the first training step, each exported signature, TFMA's
    model and metric functions) and changes nothing: it is the same code
    autograph skipped under its old name. tf.Transform's layer
    (TransformFeaturesLayer, in every exported signature that takes raw
    examples) calls a loaded SavedModel; converting its Python costs ~2 s
    per model.save. Code written for graph mode gains nothing from
    conversion: Python control flow on a tensor would fail at trace time,
    not behave differently."""
    from tensorflow.python.autograph.core import config as autograph_config

    rules = tuple(autograph_config.CONVERSION_RULES)
    known = {getattr(rule, "_prefix", None) for rule in rules}
    missing = tuple(autograph_config.DoNotConvert(name) for name in _AUTOGRAPH_SKIPPED if name not in known)
    if missing:
        autograph_config.CONVERSION_RULES = missing + rules
