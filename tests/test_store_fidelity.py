"""The MLMD store Conveyor writes, compared field by field with one TFX 1.16
wrote (../shared/data/tfx_taxi_store: its taxi pipeline run twice), so that
TFX's readers understand a Conveyor store. Where Conveyor records something
differently on purpose, DELIBERATE says so and why; every other difference
fails, and so does an entry of DELIBERATE that is no longer a difference."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import os
from typing import Any

import pytest
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2 as pb

from conveyor import LocalRunner
from conveyor.artifacts import ARTIFACT_TYPES, TFX_PAYLOAD_VERSION, Examples, ModelBlessing
from conveyor.errors import ConveyorError
from conveyor.metadata.store import ERROR, EXECUTION_RESULT, Metadata, event_paths
from tests.examples import REPO, load_example

TFX_STORE = os.environ.get(
    "CONVEYOR_TFX_TAXI_STORE",
    os.path.join(os.path.dirname(REPO), "shared", "data", "tfx_taxi_store", "metadata.sqlite"),
)
# Short training (as tests/test_e2e_taxi.py): the model still clears the 0.6 accuracy bar.
STEPS = {"train_steps": 100, "eval_steps": 20}
# TFX's node ids (its defaults: class names) and the example's Conveyor ids (snake_case).
NODES = {
    "CsvExampleGen": "csv_example_gen",
    "StatisticsGen": "statistics_gen",
    "SchemaGen": "schema_gen",
    "ExampleValidator": "example_validator",
    "Transform": "transform",
    "Trainer": "trainer",
    "latest_blessed_model_resolver": "latest_blessed_model_resolver",
    "Evaluator": "evaluator",
    "Pusher": "pusher",
}

# What Conveyor records differently from TFX on purpose, by (what, where, name).
DELIBERATE: dict[tuple[str, str, str], str] = {
    # Artifacts.
    ("artifact_custom", "*", "is_external"):
        "Conveyor imports nothing from other pipelines' stores; TFX's readers take a missing is_external as 0",
    ("artifact_custom", "Examples", "payload_format"):
        "not set by Conveyor's ExampleGen yet; TFX's readers fall back to FORMAT_TF_EXAMPLE, right for "
        "tfrecords_gzip (a follow-up for ExampleGen, which alone knows the format)",
    ("artifact_custom", "ExampleStatistics", "sample_rate_by_split"):
        "Conveyor's StatisticsGen does not sample",
    ("artifact_custom", "ExampleStatistics", "stats_dashboard_link"):
        "TFX writes an empty link to a Google-internal dashboard",
    ("artifact_custom", "ExampleAnomalies", "blessed"):
        "Conveyor's ExampleValidator records anomalies_found and anomalies_by_split instead of a per-split "
        "struct (a follow-up for ExampleValidator)",
    # Executions.
    ("execution_type_name", "*", "*"):
        "Conveyor's components record their own class (conveyor.components....): they are not TFX's classes "
        "and take other parameters; the base types match, and resolvers share TFX's resolver type",
    ("execution_name", "*", "*"):
        "TFX names each execution with a random UUID that nothing reads; Conveyor leaves it empty",
    ("execution_custom", "CsvExampleGen", "input_fingerprint"):
        "Conveyor records the input fingerprint on the Examples (as TFX also does) and in its cache key",
    ("execution_custom", "CsvExampleGen", "span"):
        "Conveyor records the span on the Examples (as TFX also does)",
    ("execution_custom", "CsvExampleGen", "output_data_format"):
        "Conveyor's ExampleGen has no payload-format parameter",
    ("execution_custom", "CsvExampleGen", "output_file_format"):
        "Conveyor's parameter is the format's name ('parquet', 'tfrecords_gzip'), TFX's its FileFormat enum "
        "number",
    ("execution_custom", "Transform", "module_path"):
        "TFX's packaged user code (a wheel); Conveyor records module_file and the code's hash in "
        "__cache_key_parts__",
    ("execution_custom", "Trainer", "module_path"):
        "TFX's packaged user code (a wheel); Conveyor records module_file and the code's hash in "
        "__cache_key_parts__",
    ("execution_custom", "Transform", "disable_statistics"):
        "Conveyor's Transform computes no statistics",
    ("execution_custom", "Evaluator", "fairness_indicator_thresholds"):
        "Conveyor's Evaluator has no fairness indicators",
    ("execution_custom", "Pusher", "custom_config"):
        "Conveyor's Pusher has no custom_config",
    # Events.
    ("event", "Transform", "pre_transform_schema"): "Conveyor's Transform computes no statistics",
    ("event", "Transform", "pre_transform_stats"): "Conveyor's Transform computes no statistics",
    ("event", "Transform", "post_transform_schema"): "Conveyor's Transform computes no statistics",
    ("event", "Transform", "post_transform_stats"): "Conveyor's Transform computes no statistics",
    ("event", "Transform", "post_transform_anomalies"): "Conveyor's Transform computes no statistics",
    ("event", "latest_blessed_model_resolver", "candidate"):
        "Conveyor's resolver reads the model about to be evaluated (never its own baseline) and records it "
        "as INPUT; TFX's records no input",
    # Contexts.
    ("context_type", "execution_cache", "*"):
        "TFX finds cached outputs through a context named by its cache key; Conveyor records its own cache "
        "key (__cache_key__, __cache_key_parts__) on the execution",
    ("context_type_property", "pipeline_run", "pipeline_name"):
        "Conveyor's lineage reads it; TFX's readers accept a type with more properties",
    ("context_type_property", "node", "pipeline_name"):
        "Conveyor's lineage reads it; TFX's readers accept a type with more properties",
    ("context_name", "pipeline_run", "*"):
        "Conveyor's run ids are YYYYMMDDTHHMMSS.ffffff (what `conveyor runs` shows); TFX's LocalDagRunner "
        "uses ISO 8601; readers take the name as opaque",
}


def _deliberate(what: str, where: str, name: str) -> bool:
    return any(key in DELIBERATE for key in ((what, where, name), (what, "*", name), (what, where, "*"),
                                             (what, "*", "*")))


def _expected(what: str) -> set[tuple[str, str, str]]:
    return {k for k in DELIBERATE if k[0] == what}


def _used(what: str, found: set[tuple[str, str]]) -> set[tuple[str, str, str]]:
    """The DELIBERATE entries that explain `found` (where, name) differences."""
    keys = set()
    for where, name in found:
        for key in ((what, where, name), (what, "*", name), (what, where, "*"), (what, "*", "*")):
            if key in DELIBERATE:
                keys.add(key)
                break
    return keys


# -- reading a store ----------------------------------------------------------------


def _open(path: str) -> Any:
    config = pb.ConnectionConfig()
    config.sqlite.filename_uri = path
    config.sqlite.connection_mode = pb.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(config)


def _kind(value: Any) -> str:
    return value.WhichOneof("value") or ""


@dataclasses.dataclass
class Snapshot:
    """What a store records, keyed by what both stores share (type names, TFX node ids)."""

    artifact_types: dict[str, tuple[str, dict[str, str]]]
    artifact_custom: dict[str, dict[str, str]]  # type -> custom property -> value kind
    artifact_contexts: dict[str, set[str]]  # type -> context types it is attributed to
    artifact_states: set[str]
    execution_types: dict[str, tuple[str, str]]  # node -> (type name, base type)
    execution_names: dict[str, set[str]]
    execution_custom: dict[str, dict[str, str]]  # node -> custom property -> value kind
    execution_contexts: dict[str, set[str]]
    events: dict[str, set[tuple[str, str]]]  # node -> {(key, event type)}
    states: dict[str, list[str]]  # node -> states of its executions, oldest first
    context_types: dict[str, dict[str, str]]
    node_contexts: set[str]
    runs: list[Any]
    run_parents: dict[str, list[str]]
    pipeline: str


def snapshot(store: Any, node_ids: dict[str, str]) -> Snapshot:
    """`node_ids` maps this store's node ids to TFX's."""
    kinds = {v: k for k, v in pb.PropertyType.items()}
    artifact_types = {t.id: t for t in store.get_artifact_types()}
    execution_types = {t.id: t for t in store.get_execution_types()}
    context_types = {t.id: t for t in store.get_context_types()}

    def base(t: Any) -> str:
        return type(t).SystemDefinedBaseType.Name(t.base_type) if t.HasField("base_type") else ""

    [pipeline] = store.get_contexts_by_type("pipeline")
    snap = Snapshot(
        artifact_types={t.name: (base(t), {k: kinds[v] for k, v in t.properties.items()})
                        for t in artifact_types.values()},
        artifact_custom=collections.defaultdict(dict), artifact_contexts=collections.defaultdict(set),
        artifact_states=set(), execution_types={}, execution_names=collections.defaultdict(set),
        execution_custom=collections.defaultdict(dict), execution_contexts=collections.defaultdict(set),
        events=collections.defaultdict(set), states=collections.defaultdict(list),
        context_types={t.name: {k: kinds[v] for k, v in t.properties.items()} for t in context_types.values()},
        node_contexts={c.name for c in store.get_contexts_by_type("node")},
        runs=store.get_contexts_by_type("pipeline_run"), run_parents={}, pipeline=pipeline.name,
    )
    for a in store.get_artifacts():
        name = artifact_types[a.type_id].name
        snap.artifact_states.add(pb.Artifact.State.Name(a.state))
        for k, v in a.custom_properties.items():
            snap.artifact_custom[name][k] = _kind(v)
        snap.artifact_contexts[name] |= {context_types[c.type_id].name for c in store.get_contexts_by_artifact(a.id)}
    for e in sorted(store.get_executions(), key=lambda e: e.id):
        contexts = store.get_contexts_by_execution(e.id)
        [node_ctx] = [c for c in contexts if context_types[c.type_id].name == "node"]
        node = node_ids[node_ctx.name[len(pipeline.name) + 1:]]
        t = execution_types[e.type_id]
        snap.execution_types[node] = (t.name, base(t))
        snap.execution_names[node].add(e.name)
        snap.states[node].append(pb.Execution.State.Name(e.last_known_state))
        snap.execution_contexts[node] |= {context_types[c.type_id].name for c in contexts}
        for k, v in e.custom_properties.items():
            snap.execution_custom[node][k] = _kind(v)
        for ev in store.get_events_by_execution_ids([e.id]):
            for key, _ in event_paths(ev):
                snap.events[node].add((key, pb.Event.Type.Name(ev.type)))
    for run in snap.runs:
        snap.run_parents[run.name] = [p.name for p in store.get_parent_contexts_by_context(run.id)]
    return snap


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The taxi example run twice on a fresh store, the second time from the
    trainer on (as in TFX's second run, the evaluator then has a baseline)."""
    if not os.path.exists(TFX_STORE):
        pytest.skip(f"no TFX store at {TFX_STORE} (set CONVEYOR_TFX_TAXI_STORE)")
    root = str(tmp_path_factory.mktemp("fidelity") / "root")
    example = load_example("taxi")

    def pipeline():
        return example.create_pipeline(root, serving_dir=os.path.join(root, "serving"), **STEPS)

    first = LocalRunner(echo=print).run(pipeline())
    second = LocalRunner(echo=print, run_from="trainer").run(pipeline())
    return first, second


@pytest.fixture(scope="module")
def tfx() -> Snapshot:
    if not os.path.exists(TFX_STORE):
        pytest.skip(f"no TFX store at {TFX_STORE} (set CONVEYOR_TFX_TAXI_STORE)")
    return snapshot(_open(TFX_STORE), {k: k for k in NODES})


@pytest.fixture(scope="module")
def ours(runs) -> Snapshot:
    # Conveyor's node ids as TFX's; the analyzer-cache resolver has no TFX twin.
    node_ids = {v: k for k, v in NODES.items()} | {"analyzer_cache": "analyzer_cache"}
    return snapshot(_open(runs[0].metadata_path), node_ids)


# -- artifacts --------------------------------------------------------------------------


def test_artifact_types_have_tfxs_base_types_and_properties(tfx, ours):
    shared = set(tfx.artifact_types) & set(ours.artifact_types)
    # Every type TFX wrote, Conveyor writes too.
    assert shared == set(tfx.artifact_types) == {
        "Examples", "ExampleStatistics", "Schema", "ExampleAnomalies", "TransformGraph", "TransformCache",
        "Model", "ModelRun", "ModelEvaluation", "ModelBlessing", "PushedModel",
    }
    for name in shared:
        assert ours.artifact_types[name] == tfx.artifact_types[name], name
    assert tfx.artifact_types["Examples"] == ("DATASET", {"span": "INT", "version": "INT", "split_names": "STRING"})
    assert tfx.artifact_types["ModelBlessing"] == ("", {})
    # Conveyor's classes declare the same (a store is not needed to see it).
    for name in shared:
        cls = ARTIFACT_TYPES[name]
        declared = {k: {int: "INT", str: "STRING", float: "DOUBLE"}[v] for k, v in cls.PROPERTIES.items()}
        assert ((cls.BASE_TYPE or ""), declared) == tfx.artifact_types[name], name


def test_custom_properties_tfx_sets_are_there_with_the_same_kind(tfx, ours):
    missing, other_kind = set(), set()
    for name, props in tfx.artifact_custom.items():
        for prop, kind in props.items():
            if prop not in ours.artifact_custom[name]:
                missing.add((name, prop))
            elif ours.artifact_custom[name][prop] != kind:
                other_kind.add((name, prop, kind, ours.artifact_custom[name][prop]))
    assert other_kind == set()
    assert _used("artifact_custom", missing) == _expected("artifact_custom")
    assert {m for m in missing if not _deliberate("artifact_custom", *m)} == set()
    # The ones TFX's readers rely on, exactly.
    assert tfx.artifact_custom["ModelBlessing"] == {
        "blessed": "int_value", "current_model_id": "int_value", "current_model": "string_value",
        "baseline_model_id": "int_value", "baseline_model": "string_value", "tfx_version": "string_value",
        "is_external": "int_value",
    }
    assert {k: ours.artifact_custom["PushedModel"][k] for k in ("pushed", "pushed_destination", "pushed_version")} \
        == {"pushed": "int_value", "pushed_destination": "string_value", "pushed_version": "string_value"}
    assert ours.artifact_custom["Examples"]["span"] == "int_value"


def test_every_artifact_carries_tfxs_payload_version(runs):
    """TFX's readers take an artifact without `tfx_version` (or older than
    0.29) for the old layout (`<uri>/train` instead of `Split-train`, ...)."""
    tfx_store = _open(TFX_STORE)
    assert {a.custom_properties["tfx_version"].string_value for a in tfx_store.get_artifacts()} == {"1.16.0"}
    store = _open(runs[0].metadata_path)
    artifacts = store.get_artifacts()
    assert {a.custom_properties["tfx_version"].string_value for a in artifacts} == {TFX_PAYLOAD_VERSION}
    assert TFX_PAYLOAD_VERSION == "1.16.0"
    from conveyor import __version__

    assert {a.custom_properties["conveyor_version"].string_value for a in artifacts} == {__version__}
    # And the files are where TFX's readers look for them then.
    md = Metadata(runs[0].metadata_path)
    [examples] = runs[0].outputs("csv_example_gen", "examples")
    [examples] = md.artifacts_by_id([examples.id])
    assert isinstance(examples, Examples) and examples.splits == ["train", "eval"]
    for split in examples.splits:
        assert os.path.isdir(os.path.join(examples.uri, f"Split-{split}"))


def test_artifacts_are_attributed_to_the_same_kinds_of_context(tfx, ours):
    assert ours.artifact_states == tfx.artifact_states == {"LIVE"}
    for name in tfx.artifact_contexts:
        assert ours.artifact_contexts[name] == tfx.artifact_contexts[name] - {"execution_cache"}, name
        assert ours.artifact_contexts[name] == {"pipeline", "pipeline_run", "node"}


# -- executions -------------------------------------------------------------------------


def test_execution_types_have_tfxs_base_types(tfx, ours):
    assert set(tfx.execution_types) == set(NODES)
    names_differ = set()
    for node, (name, base) in tfx.execution_types.items():
        our_name, our_base = ours.execution_types[node]
        assert our_base == base, node
        if our_name != name:
            names_differ.add((node, name))
    assert tfx.execution_types["Trainer"] == ("tfx.components.trainer.component.Trainer", "TRAIN")
    assert tfx.execution_types["Pusher"][1] == "DEPLOY" and tfx.execution_types["CsvExampleGen"][1] == ""
    # Only the resolver shares TFX's type name (see DELIBERATE).
    assert {node for node, _ in names_differ} == set(NODES) - {"latest_blessed_model_resolver"}
    assert _used("execution_type_name", names_differ) == _expected("execution_type_name")
    resolver = "tfx.dsl.components.common.resolver.Resolver"
    assert ours.execution_types["latest_blessed_model_resolver"] == tfx.execution_types[
        "latest_blessed_model_resolver"] == (resolver, "")
    assert ours.execution_types["analyzer_cache"] == (resolver, "")
    # Execution names: TFX's UUIDs, none in Conveyor.
    assert all(len(n) == 36 for names in tfx.execution_names.values() for n in names)
    assert set().union(*ours.execution_names.values()) == {""}
    assert _expected("execution_name") == {("execution_name", "*", "*")}


def test_execution_parameters_tfx_records_are_there_with_the_same_kind(tfx, ours):
    missing, other_kind = set(), set()
    for node, props in tfx.execution_custom.items():
        for prop, kind in props.items():
            if prop not in ours.execution_custom[node]:
                missing.add((node, prop))
            elif ours.execution_custom[node][prop] != kind:
                other_kind.add((node, prop))
    # output_file_format is a string in Conveyor, TFX's enum number: listed as missing-in-kind.
    assert other_kind == {("CsvExampleGen", "output_file_format")}
    assert _used("execution_custom", missing | other_kind) == _expected("execution_custom")
    assert {m for m in missing | other_kind if not _deliberate("execution_custom", *m)} == set()
    # Booleans are ints, as in TFX.
    assert ours.execution_custom["SchemaGen"]["infer_feature_shape"] == "int_value"
    assert ours.execution_custom["Transform"]["force_tf_compat_v1"] == "int_value"


def test_execution_states_match(tfx, ours, runs):
    # Second runs: TFX re-used the upstream nodes, Conveyor too (it re-ran from the trainer).
    for node in ("CsvExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "Transform"):
        assert ours.states[node] == tfx.states[node] == ["COMPLETE", "CACHED"], node
    for node in ("latest_blessed_model_resolver", "Evaluator", "Pusher"):
        assert ours.states[node] == tfx.states[node] == ["COMPLETE", "COMPLETE"], node


def test_executions_are_associated_to_the_same_kinds_of_context(tfx, ours):
    for node in NODES:
        assert ours.execution_contexts[node] == tfx.execution_contexts[node] - {"execution_cache"}, node
        assert ours.execution_contexts[node] == {"pipeline", "pipeline_run", "node"}


# -- events -----------------------------------------------------------------------------


def test_events_have_tfxs_types_per_node_and_key(tfx, ours):
    missing, other_type = set(), set()
    for node in NODES:
        theirs, mine = _by_key(tfx.events[node]), _by_key(ours.events[node])
        missing |= {(node, key) for key in theirs.keys() - mine.keys()}
        other_type |= {(node, key) for key in theirs.keys() & mine.keys() if theirs[key] != mine[key]}
    assert other_type == set()
    # (Keys only Conveyor has are inputs TFX's taxi pipeline does not wire, such as the Evaluator's schema.)
    assert _used("event", missing) == _expected("event") - {("event", "latest_blessed_model_resolver", "candidate")}
    assert {m for m in missing if not _deliberate("event", *m)} == set()
    # Evaluator: the baseline is an INPUT (TFX: one event with two paths for the same model).
    assert ("baseline_model", "INPUT") in tfx.events["Evaluator"] & ours.events["Evaluator"]


def _by_key(events: set[tuple[str, str]]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = collections.defaultdict(set)
    for key, kind in events:
        found[key].add(kind)
    return found


def test_resolver_records_its_choice_as_internal_output(tfx, ours):
    expected = {("model", "INTERNAL_OUTPUT"), ("model_blessing", "INTERNAL_OUTPUT")}
    assert tfx.events["latest_blessed_model_resolver"] == expected
    assert ours.events["latest_blessed_model_resolver"] == expected | {("candidate", "INPUT")}
    assert _deliberate("event", "latest_blessed_model_resolver", "candidate")
    assert ours.events["analyzer_cache"] == {("artifact", "INTERNAL_OUTPUT")}
    for snap in (tfx, ours):
        assert not any(kind == "OUTPUT" for node in ("latest_blessed_model_resolver", "analyzer_cache")
                       for _, kind in snap.events.get(node, ()))


def test_latest_blessed_model_as_tfxs_latest_policy_model_finds_it(runs):
    """TFX's LatestPolicyModel (LATEST_EVALUATOR_BLESSED): from each model, its
    INPUT events under `model`, those executions' OUTPUT artifacts, blessed
    when a ModelBlessing's custom property `blessed` is 1. The same walk
    finds the same answer in both stores."""

    def latest_blessed(store: Any) -> int | None:
        types = {t.id: t.name for t in store.get_artifact_types()}
        models = [a for a in store.get_artifacts() if types[a.type_id] == "Model"]
        executions = collections.defaultdict(set)
        for ev in store.get_events_by_artifact_ids([m.id for m in models]):
            if ev.type == pb.Event.INPUT and ("model", 0) in event_paths(ev):
                executions[ev.execution_id].add(ev.artifact_id)
        blessed = set()
        for ev in store.get_events_by_execution_ids(list(executions)):
            if ev.type != pb.Event.OUTPUT:
                continue
            [child] = store.get_artifacts_by_id([ev.artifact_id])
            if types[child.type_id] == "ModelBlessing" and child.custom_properties["blessed"].int_value == 1:
                blessed |= executions[ev.execution_id]
        return max(blessed, default=None)

    assert latest_blessed(_open(TFX_STORE)) == 13  # The one model of TFX's two runs.
    first, second = runs
    md = Metadata(first.metadata_path)
    verdicts = {m.id: b.get("blessed") for r in runs for m, b in
                zip(r.outputs("trainer", "model"), r.outputs("evaluator", "blessing"), strict=True)}
    expected = max((m for m, v in verdicts.items() if v == 1), default=None)
    assert expected is not None and latest_blessed(_open(first.metadata_path)) == expected
    # The blessing names its models as TFX's does (ids and URIs).
    [blessing] = second.outputs("evaluator", "blessing")
    [blessing] = md.artifacts_by_id([blessing.id])
    assert isinstance(blessing, ModelBlessing) and blessing.properties == {}
    [model], [baseline] = second.outputs("trainer", "model"), first.outputs("trainer", "model")
    assert {k: blessing.custom_properties[k] for k in
            ("current_model_id", "current_model", "baseline_model_id", "baseline_model")} == {
        "current_model_id": model.id, "current_model": model.uri,
        "baseline_model_id": baseline.id, "baseline_model": baseline.uri,
    }


# -- contexts ---------------------------------------------------------------------------


def test_context_types_names_and_parents(tfx, ours):
    assert set(tfx.context_types) == {"pipeline", "pipeline_run", "node", "execution_cache"}
    assert set(ours.context_types) == set(tfx.context_types) - {"execution_cache"}
    assert _expected("context_type") == {("context_type", "execution_cache", "*")}
    extra_properties = {(name, prop) for name, props in ours.context_types.items() for prop in props
                        if prop not in tfx.context_types[name]}
    assert _used("context_type_property", extra_properties) == _expected("context_type_property")
    # Node contexts: `<pipeline>.<node id>`, one per node.
    assert tfx.node_contexts == {f"taxi.{node}" for node in NODES}
    assert ours.node_contexts == {f"taxi.{node}" for node in NODES.values()} | {"taxi.analyzer_cache"}
    assert tfx.pipeline == ours.pipeline == "taxi"
    # Each run is a child of its pipeline's context.
    for snap in (tfx, ours):
        assert len(snap.run_parents) == 2 and all(p == ["taxi"] for p in snap.run_parents.values())
    # Run names: both timestamps, in their own formats.
    for run in tfx.runs:
        datetime.datetime.fromisoformat(run.name)
    for run in ours.runs:
        datetime.datetime.strptime(run.name, "%Y%m%dT%H%M%S.%f")
    assert _expected("context_name") == {("context_name", "pipeline_run", "*")}


# -- the store's own rules, on small stores ----------------------------------------------


def _store(tmp_path) -> Metadata:
    return Metadata(str(tmp_path / "metadata.sqlite"))


def test_a_failure_is_also_recorded_as_tfxs_execution_result(tmp_path):
    md = _store(tmp_path)
    ctx = md.context("pipeline", "p")
    failed = md.start_execution("x.Failing", [ctx], {}, {})
    md.fail_execution(failed, [ctx], "boom \\ here")
    stopped = md.start_execution("x.Failing", [ctx], {}, {})
    md.finish_execution(stopped, [ctx], {}, state="CANCELED", properties={ERROR: "stopped"})
    props = md.properties_of(md.execution(failed))
    assert props[ERROR] == "boom \\ here"
    assert json.loads(props[EXECUTION_RESULT]) == {"code": 2, "resultMessage": "boom \\ here"}
    assert json.loads(md.properties_of(md.execution(stopped))[EXECUTION_RESULT]) == {
        "code": 1, "resultMessage": "stopped"
    }


def test_a_store_of_an_older_conveyor_keeps_working_for_blessings(tmp_path):
    # Older Conveyor versions declared `blessed` as a property of ModelBlessing.
    md = _store(tmp_path)
    old = pb.ArtifactType(name="ModelBlessing")
    old.properties["blessed"] = pb.INT
    md.store.put_artifact_type(old)
    ctx = md.context("pipeline", "p")
    execution = md.start_execution("x.Judge", [ctx], {}, {})
    blessing = ModelBlessing(str(tmp_path / "b"))
    blessing.set("blessed", 1)
    md.finish_execution(execution, [ctx], {"blessing": [blessing]})
    [stored] = md.store.get_artifacts_by_id([blessing.id])
    assert stored.custom_properties["blessed"].int_value == 1 and "blessed" not in stored.properties


def test_a_type_that_contradicts_conveyors_asks_for_a_fresh_store(tmp_path):
    md = _store(tmp_path)
    md.store.put_artifact_type(pb.ArtifactType(name="Examples", base_type=pb.ArtifactType.STATISTICS))
    fresh = Metadata(md.path)
    fresh_store = r"artifact type 'Examples' differently .*base type DATASET.*use a fresh metadata"
    with pytest.raises(ConveyorError, match=fresh_store):
        fresh.artifact_type_id(Examples)
    # A stored property of another kind than ours contradicts it too.
    md.store.put_artifact_type(pb.ArtifactType(name="ExampleStatistics", properties={"span": pb.STRING}))
    with pytest.raises(ConveyorError, match="ExampleStatistics"):
        fresh.artifact_type_id(ARTIFACT_TYPES["ExampleStatistics"])
