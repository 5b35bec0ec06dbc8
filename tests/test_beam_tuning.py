"""conveyor.components.beam_tuning: each change to Beam's fixed costs answers
exactly what Beam's own code answers, and pipelines still run (state and
timers, side inputs, combiners, args copied at construction)."""

from __future__ import annotations

import functools
import inspect
import logging
import pickle
import threading

import apache_beam as beam
import pytest
from apache_beam.coders import VarIntCoder
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, TypeOptions
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import core, userstate
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, TimerSpec, on_timer
from apache_beam.typehints import decorators

from conveyor.components import beam_tuning


@pytest.fixture(scope="module", autouse=True)
def tuned():
    beam_tuning.apply()
    beam_tuning.apply()  # installs once
    assert not hasattr(decorators.get_signature.beam_original, "beam_original")


class Stateful(beam.DoFn):
    BAG = BagStateSpec("bag", VarIntCoder())
    TIMER = TimerSpec("flush", TimeDomain.WATERMARK)

    def process(self, element, bag=beam.DoFn.StateParam(BAG), timer=beam.DoFn.TimerParam(TIMER)):
        key, value = element
        bag.add(value)
        timer.set(0)

    @on_timer(TIMER)
    def flush(self, bag=beam.DoFn.StateParam(BAG)):
        yield sum(bag.read())
        bag.clear()


class Plain(beam.DoFn):
    def process(self, element, *rest, **kw):
        yield element

    def varargs_only(*args):
        return args


class WithProperty(beam.DoFn):
    @property
    def helper(self):
        return self._helper

    def __init__(self, helper):
        super().__init__()
        self._helper = helper

    def process(self, element):
        yield element


def test_signatures_are_memoized_and_unchanged():
    def plain(a, b=2, *, c):
        return a

    fn = Stateful()
    callables = [plain, fn.process, Plain().varargs_only, len, str.upper, int, functools.partial(plain, 1),
                 lambda x, y=1: x]
    original = decorators.get_signature.beam_original
    assert [decorators.get_signature(c) for c in callables] == [original(c) for c in callables]
    assert decorators.get_signature(plain) is decorators.get_signature(plain)
    assert core.get_signature is decorators.get_signature
    assert core.get_function_args_defaults(fn.process) == (
        ["element", "bag", "timer"], [inspect.signature(fn.process).parameters[n].default for n in ("bag", "timer")])


def test_dill_trace_still_switches():
    import dill

    assert hasattr(dill._dill._trace, "dill_original")
    dill._dill._trace(True)
    assert logging.getLogger("dill").level == logging.INFO
    dill._dill._trace(False)
    assert logging.getLogger("dill").level == logging.WARN


def _specs(specs):
    states, timers = specs
    return sorted(s.name for s in states), sorted(t.name for t in timers)


def test_dofn_specs_are_beams_for_every_kind_of_instance():
    original = userstate.get_dofn_specs.beam_original
    stateful = Stateful()
    kept_method = Plain()
    kept_method.later = Stateful().process  # a bound method kept as an attribute adds its parameters
    hidden = Stateful()
    hidden.process = lambda element: [element]  # hides the stateful process, as beam.Map keeps its fn
    cases = [stateful, Stateful(), Plain(), kept_method, hidden, WithProperty(stateful.process),
             core.CallableWrapperDoFn(lambda x: x), core.CallableWrapperDoFn(stateful.process)]
    for dofn in cases * 2:  # the second time from the memo
        assert _specs(userstate.get_dofn_specs(dofn)) == _specs(original(dofn)), dofn
    assert _specs(userstate.get_dofn_specs(stateful)) == (["bag"], ["ts-flush"])
    assert _specs(userstate.get_dofn_specs(kept_method)) == (["bag"], ["ts-flush"])
    assert _specs(userstate.get_dofn_specs(Plain())) == ([], [])
    # Callers may change what they get without changing the memo.
    userstate.get_dofn_specs(stateful)[0].clear()
    assert _specs(userstate.get_dofn_specs(stateful)) == (["bag"], ["ts-flush"])


def test_option_views_are_shared_per_options_object():
    options = PipelineOptions(["--type_check_strictness=ALL_REQUIRED"])
    view = options.view_as(TypeOptions)
    assert options.view_as(TypeOptions) is view
    assert view.type_check_strictness == "ALL_REQUIRED"
    view.type_check_strictness = "DEFAULT_TO_ANY"  # views share one store, as Beam's do
    assert options.view_as(TypeOptions).type_check_strictness == "DEFAULT_TO_ANY"
    assert PipelineOptions.view_as.beam_original(options, TypeOptions).type_check_strictness == "DEFAULT_TO_ANY"
    other = PipelineOptions([])
    assert other.view_as(TypeOptions) is not view
    assert other.view_as(TypeOptions).type_check_strictness == "DEFAULT_TO_ANY"  # Beam's default
    assert other.view_as(StandardOptions).streaming is False
    assert pickle.loads(pickle.dumps(options)).view_as(TypeOptions).type_check_strictness == "DEFAULT_TO_ANY"


def test_state_sampler_sleeps_at_most_the_short_period():
    from apache_beam.runners.worker import statesampler
    from apache_beam.utils.counters import CounterFactory

    sampler = statesampler.StateSampler("step", CounterFactory())
    assert sampler.sampling_period_ms == 1
    sampler.start()
    threading.Event().wait(0.3)  # Beam's ramp would sleep 50 ms and more by now
    sampler.stop()  # joins the sampling thread: fast when it sleeps 1 ms at a time
    assert sampler.finished


def test_pipelines_still_run_with_state_timers_side_inputs_and_copied_args():
    factor = [10]
    with beam.Pipeline() as p:
        pairs = p | "Pairs" >> beam.Create([("a", 1), ("a", 2), ("b", 5)])
        sums = pairs | beam.ParDo(Stateful())
        assert_that(sums, equal_to([3, 5]), label="StateAndTimers")
        side = p | "Side" >> beam.Create([100])
        scaled = (p | "Numbers" >> beam.Create([1, 2])
                  | beam.Map(lambda x, f, s: x * f[0] + s, factor, beam.pvalue.AsSingleton(side)))
        factor.append("changed after construction")  # Beam copied the args when the Map was built
        factor[0] = 0
        assert_that(scaled, equal_to([110, 120]), label="SideInputsAndArgs")
        total = p | "More" >> beam.Create([1, 2, 3]) | beam.CombineGlobally(sum)
        assert_that(total, equal_to([6]), label="Combine")


def test_an_unpicklable_fn_still_fails_before_the_pipeline_runs():
    lock = threading.Lock()  # not picklable
    p = beam.Pipeline()
    _ = p | beam.Create([1]) | beam.Map(lambda x: (lock, x))  # built: no copy made here any more
    with pytest.raises(Exception, match="(?i)pickle|lock"):
        p.run()


class CountsUnpickling(beam.DoFn):
    unpickled = 0

    def __setstate__(self, state):
        type(self).unpickled += 1
        self.__dict__.update(state)

    def setup(self):
        self.ready = True

    def process(self, x):
        assert self.ready  # the DoFn handed over is the one set up
        yield x * 2


def test_worker_sets_up_each_dofn_from_one_unpickling(monkeypatch):
    from apache_beam.internal import pickler
    from apache_beam.runners.worker import bundle_processor, operations

    def unpicklings() -> int:
        CountsUnpickling.unpickled = 0
        with beam.Pipeline() as p:
            doubled = p | beam.Create([1, 2]) | beam.ParDo(CountsUnpickling())
            assert_that(doubled, equal_to([2, 4]))
        return CountsUnpickling.unpickled

    assert unpicklings() == 1  # from the pipeline proto, for the one bundle processor
    monkeypatch.setattr(bundle_processor, "pickler", pickler)
    monkeypatch.setattr(operations, "pickler", pickler)
    # Beam's worker: from the proto, then its spec (operation built, set up,
    # asked for performance hints).
    assert unpicklings() == 4


LAZY_GCP_IO = """
import json, sys
from conveyor.components import beam_tuning
lazy = sys.argv[1] == "lazy"
if lazy:
    beam_tuning.import_beam()
import apache_beam as beam
loaded_at_import = "google.cloud.bigquery" in sys.modules
# What the DirectRunner imports at each run is imported already.
pubsub_imported = "apache_beam.io.gcp.pubsub" in sys.modules
read = beam.io.ReadFromBigQuery  # the first use of a deferred name imports them
from apache_beam.io import WriteToPubSub, gcsio  # noqa: F401
import apache_beam.io.gcp.bigquery as bigquery
print(json.dumps({"loaded_at_import": loaded_at_import, "pubsub": pubsub_imported,
                  "same": read is bigquery.ReadFromBigQuery,
                  "names": sorted(n for n in vars(beam.io) if not n.startswith("_")),
                  "hook_left": "__getattr__" in vars(beam.io),
                  "missing": not hasattr(beam.io, "NoSuchTransform")}))
"""


def _beam_io_seen(how: str) -> dict:
    import json
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", LAZY_GCP_IO, how], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": repo}, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_beam_imported_by_the_fork_server_defers_google_cloud_io_to_its_first_use():
    lazy, eager = _beam_io_seen("lazy"), _beam_io_seen("eager")
    assert eager["loaded_at_import"] and not lazy["loaded_at_import"]
    assert lazy["same"] and lazy["missing"] and not lazy["hook_left"] and lazy["pubsub"]
    assert lazy["names"] == eager["names"] and "ReadFromBigQuery" in lazy["names"]


def _pardo_payloads(proto) -> list[bytes]:
    from apache_beam.portability import common_urns
    from apache_beam.portability.api import beam_runner_api_pb2

    payloads = []
    for transform in proto.components.transforms.values():
        if transform.spec.urn == common_urns.primitives.PAR_DO.urn:
            pardo = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
            payloads.append(pardo.do_fn.payload)
    return payloads


def test_pickles_stay_uncompressed_only_for_a_runner_in_this_process(monkeypatch):
    from apache_beam.internal import dill_pickler, pickler
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.transforms import environments

    seen = []
    original = fn_runner.FnApiRunner.run_via_runner_api

    def run_via_runner_api(self, pipeline_proto, options):
        seen.append(pipeline_proto)
        return original(self, pipeline_proto, options)

    monkeypatch.setattr(fn_runner.FnApiRunner, "run_via_runner_api", run_via_runner_api)
    for mode in ("in_memory", "multi_threading"):
        seen.clear()
        with beam.Pipeline(options=PipelineOptions([f"--direct_running_mode={mode}"])) as p:
            doubled = p | beam.Create([1, 2]) | beam.ParDo(CountsUnpickling())
            assert_that(doubled, equal_to([2, 4]))
        payloads = _pardo_payloads(seen[0])
        assert payloads and all(b.startswith(beam_tuning._IN_PROCESS) for b in payloads), mode
        assert payloads[0].decode("ascii")  # some of Beam's callers decode a pickle as ASCII
        # Beam's own pickles (bz2 in base64) are not mistaken for them.
        fn = pickler.loads(payloads[-1])
        assert pickler.loads(dill_pickler.dumps.beam_original(fn)) is not fn

    # A proto for a worker in another process, or for no runner: Beam's pickles.
    p = beam.Pipeline()
    _ = p | beam.Create([1]) | beam.ParDo(CountsUnpickling())
    for environment in (environments.ExternalEnvironment("localhost:1"), None):
        payloads = _pardo_payloads(p.to_runner_api(default_environment=environment))
        assert payloads and not any(b.startswith(beam_tuning._IN_PROCESS) for b in payloads)
        assert all(dill_pickler.loads.beam_original(b) for b in payloads)


def test_cached_state_is_weighed_as_beam_weighs_it_without_rescanning_modules(monkeypatch):
    import json
    import sys
    import types

    import objsize
    import objsize.traverse
    from apache_beam.runners.worker import statecache

    scans = []
    iter_modules_globals = objsize.traverse._iter_modules_globals
    monkeypatch.setattr(objsize.traverse, "_iter_modules_globals",
                        lambda: scans.append(1) or iter_modules_globals())

    def weights(*values) -> tuple[list[int], int]:
        scans.clear()
        return [statecache.get_deep_size(v) for v in values], len(scans)

    fresh = types.ModuleType("conveyor_test_fresh_module")
    fresh.big = list(range(10_000))
    values = (["a" * 100], {"k": [1, 2, 3], "none": None}, (b"x" * 1000, None), Plain(), [vars(json)],
              [statecache.get_deep_size], [vars(fresh)])
    ours, our_scans = weights(*values)
    with monkeypatch.context() as m:
        m.setattr(statecache, "objsize", objsize)
        beams, beam_scans = weights(*values)
    assert (our_scans, beam_scans) == (0, len(values))
    # A module's dict counts unless the module is loaded: after an import, the
    # exclusions are collected again.
    assert ours == beams and ours[-1] > 10_000 * 28
    monkeypatch.setitem(sys.modules, fresh.__name__, fresh)
    ours, _ = weights(*values)
    with monkeypatch.context() as m:
        m.setattr(statecache, "objsize", objsize)
        beams, _ = weights(*values)
    assert ours == beams and ours[-1] < 1_000


class YieldsAndReturns(beam.DoFn):
    def process(self, element):
        if element:
            return [element]
        yield element


def test_process_source_is_read_once_per_function_and_still_warned_about(monkeypatch, caplog):
    import inspect as inspect_module

    fns = [Plain(), YieldsAndReturns(), Plain(), YieldsAndReturns(), beam.Map(len).fn, beam.Map(abs).fn]
    reads = []
    getsourcelines = inspect_module.getsourcelines
    monkeypatch.setattr(inspect_module, "getsourcelines", lambda f: reads.append(f) or getsourcelines(f))
    with caplog.at_level(logging.WARNING, logger=core.__name__):
        answers = [core._check_fn_use_yield_and_return(fn.process) for fn in fns]
    assert answers == [False, True, False, True, False, False]
    assert len(reads) == 2  # Plain.process, YieldsAndReturns.process; Map's wrapper was read when built
    ours = [r.getMessage() for r in caplog.records]
    caplog.clear()
    reads.clear()
    monkeypatch.setattr(core, "_get_function_body_without_inners",
                        core._get_function_body_without_inners.beam_original)
    with caplog.at_level(logging.WARNING, logger=core.__name__):
        assert [core._check_fn_use_yield_and_return(fn.process) for fn in fns] == answers
    assert len(reads) == len(fns)
    assert [r.getMessage() for r in caplog.records] == ours
