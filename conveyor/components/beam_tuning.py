"""Beam's fixed costs per transform and per bundle, cut in the node's own process.

At 15k rows the data work of a Transform run is a small part of its time:
the rest is Beam building ~1,000 transforms and running ~130 fused stages,
each one bundle. Measured on the taxi Transform (7.0 s in all), Beam spent
0.85 s inspecting every method of every DoFn for state and timer
parameters (4k times), 0.4 s building and parsing an argparse parser per
options view (2k views), 0.4 s waiting for each bundle's state-sampler
thread to wake from its sleep, 0.5 s pickling each DoFn at
construction to check that it pickles (the copy is thrown away; the
pipeline pickles it again when it runs), and 0.5 s pickling each DoFn a
second time as a stage is set up, only to unpickle it in the same process.
Later measures on the same run: 0.19 s compressing with bz2 pickles that
never leave the process, 0.3 s collecting every module's `__dict__` each
time the worker weighs a cached side input of a few hundred bytes, and
0.1 s reading the source of the same `process` methods again and again.

`apply()` changes those, once per process, without changing what Beam
computes; `ExecutionContext.beam_pipeline()` and Beam workers
(`conveyor.beam_worker`) call it. Each change keeps Beam's own function
for any case it does not cover.

`import_beam()` is for a process that has not imported Beam yet and runs
one thread (the fork server): `import apache_beam` without the Google Cloud
IO modules that `apache_beam.io` imports only to re-export their names,
which are imported at the first use of one of those names instead.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import threading
import types
import weakref
from typing import Any

__all__ = ["apply", "import_beam"]

_APPLIED = False
_LOCK = threading.Lock()
_MISSING = object()
# A sampling period of 1 ms: Beam's default ramps a sleep from 2 ms up to
# 200 ms, and a bundle's end waits for the sampler thread's current sleep.
STATE_SAMPLING_PERIOD_MS = 1


# What apache_beam/io/__init__.py star-imports in one `try` (names and all)
# for the names `beam.io.ReadFromBigQuery`, `beam.io.WriteToPubSub`, ...:
# the BigQuery IO with its client library is 0.27 s of the 0.6 s an
# `import apache_beam` takes once TensorFlow is imported.
_GCP_IO = ("apache_beam.io.gcp.bigquery", "apache_beam.io.gcp.pubsub", "apache_beam.io.gcp.gcsio",
           "apache_beam.transforms.xlang.io")
# Bound by name rather than star-imported (`from apache_beam.io.gcp import gcsio`).
_GCP_IO_BY_NAME = {"apache_beam.io.gcp.gcsio"}
_GCP_IO_LOCK = threading.RLock()
_GCP_IO_LOADING: list[bool] = []  # non-empty while the thread holding the lock imports them


def import_beam() -> None:
    """`import apache_beam`, deferring the Google Cloud IO modules
    `apache_beam.io` imports only for their names (`_GCP_IO`) to the first
    look-up of a name `apache_beam.io` lacks, which imports them as Beam
    would have and finds it there. Importing one of them directly works as
    ever. For a process of one thread: while Beam is imported, importing
    the first of them fails, as Beam's `try` expects of a missing client
    library. Does nothing once Beam is imported."""
    if "apache_beam" in sys.modules:
        return
    first = _GCP_IO[0]
    sys.modules[first] = None  # type: ignore[assignment]  # `import` raises ImportError for it
    try:
        import apache_beam  # noqa: F401
    finally:
        if first in sys.modules and sys.modules[first] is None:
            del sys.modules[first]
    # The DirectRunner imports the Pub/Sub IO at each run (to look for its
    # transforms): imported now, once; its names are bound with the rest.
    try:
        importlib.import_module("apache_beam.io.gcp.pubsub")
    except ImportError:
        pass
    io = sys.modules["apache_beam.io"]
    if not any(name in io.__dict__ for name in ("ReadFromBigQuery", "gcsio")):
        io.__getattr__ = _gcp_io_attribute  # type: ignore[attr-defined]  # PEP 562


def _gcp_io_attribute(name: str) -> Any:
    """`apache_beam.io`'s module `__getattr__` (see `import_beam`): the
    first look-up of a public name it lacks binds the deferred names, then
    the hook goes."""
    io = sys.modules["apache_beam.io"]
    if not name.startswith("_"):
        with _GCP_IO_LOCK:  # re-entered if the modules look up such a name while they load
            if io.__dict__.get("__getattr__") is _gcp_io_attribute and not _GCP_IO_LOADING:
                _GCP_IO_LOADING.append(True)
                try:  # as Beam's `try`: in order, up to the first that fails
                    for module_name in _GCP_IO:
                        module = importlib.import_module(module_name)
                        if module_name in _GCP_IO_BY_NAME:
                            io.__dict__[module_name.rpartition(".")[2]] = module
                            continue
                        names = getattr(module, "__all__", None)
                        if names is None:
                            names = [n for n in vars(module) if not n.startswith("_")]
                        for n in names:
                            io.__dict__[n] = getattr(module, n)
                except ImportError:
                    pass
                finally:
                    del io.__dict__["__getattr__"]
                    _GCP_IO_LOADING.clear()
        if name in io.__dict__:
            return io.__dict__[name]
    raise AttributeError(f"module 'apache_beam.io' has no attribute {name!r}")


def apply() -> None:
    """Install every change below, once per process."""
    global _APPLIED
    with _LOCK:
        if _APPLIED:
            return
        _memoize_signatures()
        _skip_unchanged_dill_trace()
        _memoize_dofn_specs()
        _reuse_option_views()
        _sample_state_briefly()
        _skip_construction_pickle_check()
        _hand_over_worker_fns()
        _skip_compression_in_process()
        _weigh_cached_state_without_rescanning_modules()
        _memoize_process_source()
        _APPLIED = True


def _memoize_signatures() -> None:
    """Beam inspects every method of every DoFn several times per ParDo
    (built, converted for the runner, each bundle set up): ~150k
    `inspect.signature` calls and ~25% of Transform's time on the taxi
    data. A plain function's signature is fixed once it is defined, so it
    is kept (weakly, by the function); a bound method's is its function's
    without the first parameter, as inspect computes it. Anything else
    (builtins, callables, partials) goes to Beam's own code."""
    from apache_beam.transforms import core, ptransform, util
    from apache_beam.typehints import decorators

    original = decorators.get_signature
    cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)

    def get_signature(func: Any) -> inspect.Signature:
        if type(func) is types.FunctionType:
            signature = cache.get(func)
            if signature is None:
                signature = cache[func] = original(func)
            return signature
        if type(func) is types.MethodType and type(func.__func__) is types.FunctionType:
            unbound = get_signature(func.__func__)
            params = list(unbound.parameters.values())
            if params and params[0].kind in positional:
                return unbound.replace(parameters=params[1:])
        return original(func)

    get_signature.beam_original = original  # type: ignore[attr-defined]  # for tests
    for module in (decorators, core, ptransform, util):
        module.get_signature = get_signature  # type: ignore[attr-defined]


def _skip_unchanged_dill_trace() -> None:
    """Beam's pickler turns dill's trace off after every pickle and
    unpickle by setting dill's logger level, and `Logger.setLevel` clears
    the cache of every logger in the process (hundreds, once TensorFlow is
    imported): ~0.6 s per Transform run. Setting the level the logger
    already has is skipped; a level that differs is set as before."""
    import logging

    import dill
    from apache_beam.internal import dill_pickler  # noqa: F401 - makes `dill.dill` (its alias of dill._dill)

    module = dill._dill  # `dill.dill`, on which Beam's pickler calls `_trace`
    logger = logging.getLogger("dill")
    original = module._trace

    def _trace(boolean: bool) -> None:
        if logger.level != (logging.INFO if boolean else logging.WARN):
            original(boolean)

    _trace.dill_original = original  # type: ignore[attr-defined]  # for tests
    module._trace = _trace


def _memoize_dofn_specs() -> None:
    """`userstate.get_dofn_specs` wraps every method of a DoFn (its `dir`)
    to find state and timer parameters, on each ParDo built, converted and
    set up for a bundle. The answer depends on the class and on what the
    instance's own attributes change: a bound method kept as an attribute,
    or an attribute hiding one of the class's methods (as `beam.Map` keeps
    its function as `process`). So it is kept per class and per those
    attributes (names, and the functions of bound methods). A class with
    properties of its own, whose values can differ per instance, and
    objects without a `__dict__` get Beam's own function every time."""
    from apache_beam.transforms import userstate

    original = userstate.get_dofn_specs
    # class -> its callable names and {instance key: specs}, or None when not cacheable
    by_class: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get_dofn_specs(dofn: Any) -> tuple[set, set]:
        own = getattr(dofn, "__dict__", None)
        cls = type(dofn)
        if own is None:
            return original(dofn)
        entry = by_class.get(cls, _MISSING)
        if entry is _MISSING:
            entry = by_class[cls] = _class_entry(cls)
        if entry is None:
            return original(dofn)
        callables, answers = entry
        key = tuple(
            (name, value.__func__ if isinstance(value, types.MethodType) else None)
            for name, value in own.items()
            if isinstance(value, types.MethodType) or name in callables
        )
        try:
            specs = answers.get(key)
        except TypeError:  # an unhashable function
            return original(dofn)
        if specs is None:
            specs = answers[key] = original(dofn)
        return set(specs[0]), set(specs[1])

    get_dofn_specs.beam_original = original  # type: ignore[attr-defined]  # for tests
    # Beam's callers (and userstate's own is_stateful_dofn) look it up here.
    userstate.get_dofn_specs = get_dofn_specs


def _class_entry(cls: type) -> tuple[frozenset, dict] | None:
    from apache_beam.transforms.core import DoFn

    names = dir(cls)
    for name in names:
        attribute = inspect.getattr_static(cls, name, None)
        # DoFn's own properties answer booleans about `process`; another's
        # might answer a bound method.
        if isinstance(attribute, property) and attribute is not inspect.getattr_static(DoFn, name, None):
            return None
    return frozenset(name for name in names if callable(inspect.getattr_static(cls, name, None))), {}


def _reuse_option_views() -> None:
    """`PipelineOptions.view_as(cls)` builds an argparse parser of every
    option of `cls` and parses the flags again, for a view whose state is
    the shared `_all_options` dict: Beam asks for a view twice per
    transform applied. A view is kept per options object and class, and
    made again when the options object's flags or dict are not the ones it
    was made from."""
    from apache_beam.options import pipeline_options

    original = pipeline_options.PipelineOptions.view_as
    views: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # options -> {cls: view}

    def view_as(self: Any, cls: type) -> Any:
        try:
            mine = views.setdefault(self, {})
        except TypeError:  # not weakly referable
            return original(self, cls)
        view = mine.get(cls)
        if (view is None or view._all_options is not self._all_options
                or view._flags is not self._flags):
            view = mine[cls] = original(self, cls)
        return view

    view_as.beam_original = original  # type: ignore[attr-defined]  # for tests
    pipeline_options.PipelineOptions.view_as = view_as  # type: ignore[method-assign]


def _sample_state_briefly() -> None:
    """Each bundle's end joins its state sampler's thread, which sleeps
    between samples (2 ms growing to 200 ms): ~3 ms per bundle at 15k rows,
    0.4 s per Transform run. Sampling every 1 ms keeps the wait under 1 ms;
    the thread only reads a clock and adds under a lock, without the GIL."""
    from apache_beam.runners.worker import statesampler

    original = statesampler.StateSampler.__init__

    def __init__(self: Any, prefix: str, counter_factory: Any,
                 sampling_period_ms: int = statesampler.DEFAULT_SAMPLING_PERIOD_MS) -> None:
        original(self, prefix, counter_factory, min(sampling_period_ms, STATE_SAMPLING_PERIOD_MS))

    __init__.beam_original = original  # type: ignore[attr-defined]  # for tests
    statesampler.StateSampler.__init__ = __init__  # type: ignore[method-assign]


class _Unpickled:
    """What a replaced `dumps` hands back instead of pickling: the object
    itself, for a `loads` of the same process (`_loads`)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _loads(data: Any, *args: Any, **kwargs: Any) -> Any:
    """Beam's `pickler.loads`, except that an `_Unpickled` gives its object."""
    if type(data) is _Unpickled:
        return data.value
    from apache_beam.internal import pickler

    return pickler.loads(data, *args, **kwargs)


def _skip_construction_pickle_check() -> None:
    """`PTransformWithSideInputs.__init__` pickles and unpickles its fn to
    check that it pickles, then keeps the original fn (0.5 s of a Transform
    run). The pipeline pickles every fn again when it runs, so an
    unpicklable fn still fails before any data is read. Only that round
    trip of the fn under construction is skipped, and the copy of empty
    args or kwargs is a new empty one without the pickler (bz2
    costs 0.2 ms even for an empty one); other args and kwargs are copied
    through the pickler, as Beam does."""
    from apache_beam.internal import pickler
    from apache_beam.transforms import ptransform

    cls = ptransform.PTransformWithSideInputs
    original_init = cls.__init__
    building = threading.local()

    def dumps(o: Any, *args: Any, **kwargs: Any) -> Any:
        stack = getattr(building, "stack", None)
        if stack:
            if o is getattr(stack[-1], "fn", _MISSING):
                return _Unpickled(o)
            if type(o) in (tuple, list, dict) and not o:  # no args: the copy is a new empty one
                return _Unpickled(type(o)())
        return pickler.dumps(o, *args, **kwargs)

    def __init__(self: Any, fn: Any, *args: Any, **kwargs: Any) -> None:
        stack = building.__dict__.setdefault("stack", [])
        stack.append(self)
        try:
            original_init(self, fn, *args, **kwargs)
        finally:
            stack.pop()

    __init__.beam_original = original_init  # type: ignore[attr-defined]  # for tests
    # ptransform's own name for the pickler: its other uses (pickled
    # transforms in the runner API) reach Beam's functions unchanged.
    ptransform.pickler = types.SimpleNamespace(dumps=dumps, loads=_loads)  # type: ignore[attr-defined]
    cls.__init__ = __init__  # type: ignore[method-assign]


def _hand_over_worker_fns() -> None:
    """Setting up a stage, Beam's worker unpickles each DoFn from the
    pipeline proto, adds the windowing, pickles the tuple again into the
    operation's spec, and unpickles that twice more (the operation's
    constructor and its setup): ~1 ms a ParDo, 0.5 s of a Transform run
    (440 ParDos). Those specs never leave the process, so the worker's
    module hands the objects over instead; the pipeline proto is still
    unpickled, so each operation gets DoFns of its own, once per bundle
    processor, as before."""
    from apache_beam.internal import pickler
    from apache_beam.runners.worker import bundle_processor, operations

    def hand_over(o: Any, *args: Any, **kwargs: Any) -> _Unpickled:
        return _Unpickled(o)

    # bundle_processor pickles only the specs of the operations it builds
    # (DoFns, window fns, combine fns); operations only unpickles specs.
    bundle_processor.pickler = types.SimpleNamespace(dumps=hand_over, loads=_loads)  # type: ignore[attr-defined]
    operations.pickler = types.SimpleNamespace(dumps=pickler.dumps, loads=_loads)  # type: ignore[attr-defined]


# Before an in-process payload: not base64 (so never the start of one of
# Beam's), and ASCII (some callers decode a pickle as ASCII).
_IN_PROCESS = b"conveyor-in-process-dill:"
_IN_PROCESS_STR = _IN_PROCESS.decode("ascii")


def _skip_compression_in_process() -> None:
    """The FnApiRunner on an embedded environment (the in-memory and
    multi-threaded DirectRunner) pickles every DoFn, combine fn, window fn
    and coder into its pipeline proto, then its workers, threads of the same
    process, unpickle them from it. Beam compresses each pickle with bz2
    at level 9 first: 0.19 s of a taxi Transform run at 15k rows, for a
    proto that never leaves the process. While such a runner converts the
    pipeline, the pickles are dill's bytes in base64 behind a marker
    (`_IN_PROCESS`), which `loads` recognises; everything else, including
    every pickle for a runner in another process, is Beam's, bz2 and all.
    With `--pickle_library=cloudpickle`, Beam's pickler is left alone."""
    import base64

    import dill
    from apache_beam import pipeline
    from apache_beam.internal import dill_pickler
    from apache_beam.transforms import environments

    original_dumps, original_loads = dill_pickler.dumps, dill_pickler.loads
    original_to_runner_api = pipeline.Pipeline.to_runner_api
    embedded = (environments.EmbeddedPythonEnvironment, environments.EmbeddedPythonGrpcEnvironment)
    converting = threading.local()
    lock = getattr(dill_pickler, "_pickle_lock", threading.RLock())  # Beam's, shared with its own calls

    def dumps(o: Any, enable_trace: bool = True, use_zlib: bool = False) -> bytes:
        if getattr(converting, "active", False):
            try:
                with lock:
                    raw = dill.dumps(o, byref=dill_pickler.settings["dill_byref"])
                return _IN_PROCESS + base64.b64encode(raw)
            except Exception:  # noqa: BLE001 - Beam's own call raises it, traced
                pass
        return original_dumps(o, enable_trace=enable_trace, use_zlib=use_zlib)

    def loads(encoded: Any, enable_trace: bool = True, use_zlib: bool = False) -> Any:
        marker = _IN_PROCESS_STR if isinstance(encoded, str) else _IN_PROCESS
        if encoded[:len(marker)] == marker:
            raw = base64.b64decode(encoded[len(marker):])
            with lock:
                return dill.loads(raw)
        return original_loads(encoded, enable_trace=enable_trace, use_zlib=use_zlib)

    def to_runner_api(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(kwargs.get("default_environment"), embedded) or getattr(converting, "active", False):
            return original_to_runner_api(self, *args, **kwargs)
        converting.active = True
        try:
            return original_to_runner_api(self, *args, **kwargs)
        finally:
            converting.active = False

    for function, original in ((dumps, original_dumps), (loads, original_loads),
                               (to_runner_api, original_to_runner_api)):
        function.beam_original = original  # type: ignore[attr-defined]  # for tests
    dill_pickler.dumps, dill_pickler.loads = dumps, loads  # pickler.dumps/loads look them up per call
    pipeline.Pipeline.to_runner_api = to_runner_api  # type: ignore[method-assign]


def _weigh_cached_state_without_rescanning_modules() -> None:
    """Beam's worker weighs each side input or state value it caches with
    `objsize.get_deep_size`, which by default first collects the `__dict__`
    of every module in `sys.modules` so as not to count them: ~3 ms a call
    once TensorFlow is imported (10k modules), 0.3 s of a taxi Transform
    run, for values of a few hundred bytes. Those dicts are collected
    once and again only when the number of modules changes, and passed to
    objsize as its exclude set, which it only reads (and adds None's id,
    already in it); the traversal, the filters and the sizes are Beam's."""
    import objsize
    from apache_beam.runners.worker import statecache

    original = objsize.get_deep_size
    known: list[Any] = [-1, set()]  # len(sys.modules) it was built for, the ids

    def module_dicts() -> set[int]:
        count, ids = known
        if count != len(sys.modules):
            ids = {id(None)}
            for module in list(sys.modules.values()):
                try:
                    ids.add(id(vars(module)))
                except TypeError:  # as objsize: not a module with a __dict__
                    pass
            known[:] = [len(sys.modules), ids]
        return ids

    def get_deep_size(*objs: Any, **kwargs: Any) -> int:
        if kwargs.get("exclude_modules_globals") is not None or kwargs.get("exclude_set") is not None:
            return original(*objs, **kwargs)
        return original(*objs, exclude_modules_globals=False, exclude_set=module_dicts(), **kwargs)

    get_deep_size.beam_original = original  # type: ignore[attr-defined]  # for tests
    # statecache's own name for objsize (nothing else of it is used there).
    statecache.objsize = types.SimpleNamespace(get_deep_size=get_deep_size)  # type: ignore[attr-defined]


def _memoize_process_source() -> None:
    """Each ParDo built reads the source of its DoFn's `process` (to warn
    about `yield` beside `return`): `inspect.getsourcelines`, a stat of the
    file and a tokenizing pass, ~0.2 ms, 465 times in a taxi Transform run
    for a few dozen functions (every `beam.Map` shares one wrapper). The
    body Beam extracts is kept per code object; Beam's check, and its
    warnings, still run for every ParDo. Anything that is not a plain
    function or a method of one goes to Beam's own code."""
    from apache_beam.transforms import core

    original = core._get_function_body_without_inners
    bodies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # code object -> body

    def body_without_inners(func: Any) -> str:
        function = func.__func__ if type(func) is types.MethodType else func
        if type(function) is not types.FunctionType:
            return original(func)
        code = function.__code__
        body = bodies.get(code)
        if body is None:
            body = bodies[code] = original(func)  # raises as Beam's does, and is then not kept
        return body

    body_without_inners.beam_original = original  # type: ignore[attr-defined]  # for tests
    core._get_function_body_without_inners = body_without_inners
