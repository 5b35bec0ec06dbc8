"""The node launcher: an invocation is plain JSON, `python -m conveyor.launch`
runs one node from it without MLMD, parameters survive JSON, LocalRunner
runs nodes through the same contract in a child process, user code is
staged for remote workers, and a remote runner that cannot get the code is
refused before any Beam job starts."""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import subprocess
import sys

import pytest

from conveyor import LocalRunner, Pipeline, PipelineDefinitionError, fs
from conveyor.artifacts import ExampleStatistics, Schema
from conveyor.components import (
    CsvExampleGen,
    Evaluator,
    ExampleValidator,
    Importer,
    ImportExampleGen,
    LatestArtifact,
    SchemaGen,
    StatisticsGen,
    Trainer,
    Transform,
)
from conveyor.components.example_gen import Input, InputSplit, Output, SplitBucket, SplitConfig
from conveyor.components.schema_gen import ImportSchemaGen
from conveyor.components.statistics_gen import StatsOptions
from conveyor.components.trainer import EvalArgs, TrainArgs
from conveyor.components.transform import SplitsConfig
from conveyor.launch import WARM_MODULES, Invocation, InvocationResult, execute
from conveyor.pipeline import driver
from conveyor.pipeline.dsl import Channel, from_jsonable, to_jsonable
from tests.examples import example_dir, load_example

TESTDATA = os.path.join(os.path.dirname(__file__), "testdata")
STATS = os.path.join(TESTDATA, "taxi", "statistics_gen")
TAXI_MODULE = os.path.join(example_dir("taxi"), "taxi_utils.py")


# -- parameters through JSON ------------------------------------------------------


def _every_component():
    """One of each standard component, with parameters off their defaults,
    plus every component of the two example pipelines."""
    import tensorflow_model_analysis as tfma

    examples = Channel(CsvExampleGen.OUTPUTS["examples"])
    statistics = Channel(ExampleStatistics)
    schema = Channel(Schema)
    made = [
        CsvExampleGen(
            input_base="data",
            input_config=Input(splits=(InputSplit("train", "train/*.csv"), InputSplit("eval", "eval/*.csv"))),
            output_file_format="tfrecords_gzip",
        ),
        CsvExampleGen(
            input_base="data",
            input_config=Input(splits=(InputSplit("all", "span-{SPAN:2}/*.csv"),)),
            output_config=Output(split_config=SplitConfig(
                splits=(SplitBucket("train", 3), SplitBucket("eval", 1)), partition_feature_name="company")),
        ),
        ImportExampleGen(input_base="data", payload_format="parquet"),
        StatisticsGen(examples=examples, exclude_splits=["eval"],
                      stats_options=StatsOptions(num_top_values=5, sample_rate=0.5, feature_allowlist=["a"])),
        SchemaGen(statistics=statistics, infer_feature_shape=False),
        ImportSchemaGen(schema_file="schema.pbtxt"),
        ExampleValidator(statistics=statistics, schema=schema, fail_on_anomalies=True, environment="SERVING"),
        Transform(examples=examples, schema=schema, module_file=TAXI_MODULE,
                  splits_config=SplitsConfig(analyze=["train"], transform=["train", "eval"]),
                  custom_config={"k": [1, 2.5, "x"], "nested": {"a": None}}),
        Trainer(examples=examples, schema=schema, run_fn="pkg.mod.run_fn",
                train_args=TrainArgs(num_steps=7, splits=["train"]), eval_args=EvalArgs(num_steps=None),
                hyperparameters={"lr": 0.1}),
        Evaluator(examples=examples, model=Channel(Trainer.OUTPUTS["model"]),
                  eval_config=tfma.EvalConfig(
                      model_specs=[tfma.ModelSpec(label_key="tips")],
                      metrics_specs=[tfma.MetricsSpec(metrics=[tfma.MetricConfig(class_name="BinaryAccuracy")])])),
        LatestArtifact(artifact_type="Schema", producer="schema_gen"),
        Importer(source_uri="schema.pbtxt", artifact_type="Schema", reimport=True,
                 custom_properties={"note": "hand-curated", "n": 3}),
    ]
    for name in ("taxi", "penguin"):
        pipeline = load_example(name).create_pipeline("/tmp/unused-root", train_steps=1, eval_steps=1)
        made += list(pipeline.components)
    return made


def _types(value):
    """The Python types inside a typed value, where they matter after JSON."""
    if dataclasses.is_dataclass(value):
        return (type(value), tuple(_types(getattr(value, f.name)) for f in dataclasses.fields(value)))
    if isinstance(value, enum.Enum) or hasattr(value, "SerializeToString"):
        return type(value)
    if isinstance(value, (list, tuple)):
        return tuple(_types(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _types(v)) for k, v in sorted(value.items()))
    return None


def test_every_components_params_round_trip_through_json():
    components = _every_component()
    kinds = {type(c).__name__ for c in components}
    assert {"CsvExampleGen", "ImportExampleGen", "StatisticsGen", "SchemaGen", "ImportSchemaGen",
            "ExampleValidator", "Transform", "Trainer", "Evaluator", "Pusher", "LatestBlessedModel",
            "LatestArtifact", "Importer"} <= kinds
    for c in components:
        as_json = json.loads(json.dumps(to_jsonable(c.params)))
        back = from_jsonable(type(c.params), as_json)
        assert type(back) is type(c.params), c.id
        assert to_jsonable(back) == as_json, c.id
        assert _types(back) == _types(c.params), c.id


def test_what_every_standard_executor_needs_imported_is_on_the_fork_servers_list():
    # A need the server does not import itself is left to the node: it
    # would be imported late, in the node's process, with no warning.
    needs = {type(c).__name__: type(c).EXECUTOR_IMPORTS for c in _every_component()}
    assert needs["StatisticsGen"] and needs["Transform"] and needs["Evaluator"]
    for kind, modules in needs.items():
        assert set(modules) <= set(WARM_MODULES), kind


def test_round_trip_restores_dataclasses_enums_and_protos():
    import tensorflow_model_analysis as tfma

    from conveyor.components.evaluator import EvalConfig, EvaluatorParams

    taxi = load_example("taxi").create_pipeline("/tmp/unused-root", train_steps=1, eval_steps=1)
    evaluator = taxi.component("evaluator")
    back = from_jsonable(EvaluatorParams, json.loads(json.dumps(to_jsonable(evaluator.params))))
    assert isinstance(back.eval_config, EvalConfig)
    assert back == evaluator.params
    proto = EvaluatorParams(eval_config=tfma.EvalConfig(model_specs=[tfma.ModelSpec(label_key="tips")]))
    back = from_jsonable(EvaluatorParams, json.loads(json.dumps(to_jsonable(proto))))
    assert isinstance(back.eval_config, tfma.EvalConfig) and back == proto
    config = Input(splits=(InputSplit("a", "a/*"),))
    assert from_jsonable(Input, to_jsonable(config)) == config


# -- one node from an invocation file ------------------------------------------------


def _schema_gen_invocation(out_uri: str) -> Invocation:
    with open(os.path.join(STATS, "statistics.json")) as f:
        record = json.load(f)
    stats = ExampleStatistics(os.path.join(STATS, "statistics"), id=7, properties=record["properties"])
    component = SchemaGen(statistics=Channel(ExampleStatistics), infer_feature_shape=False)
    return driver.invocation(
        component, to_jsonable(component.params), {"statistics": [stats]}, {"schema": [Schema(out_uri)]},
        pipeline_name="p", root=os.path.dirname(out_uri), execution_id=3, beam_args=[],
    )


def test_launcher_runs_one_node_from_json_without_mlmd(tmp_path):
    out = str(tmp_path / "schema_gen" / "schema" / "3")
    invocation = _schema_gen_invocation(out)
    request = tmp_path / "invocation.json"
    request.write_text(invocation.to_json())
    assert Invocation.from_json(request.read_text()) == invocation
    answer = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "conveyor.launch", str(request), "--result", str(answer)],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = InvocationResult.from_json(answer.read_text())
    assert result.succeeded and result.error == ""
    [schema] = result.output_artifacts()["schema"]
    assert schema.uri == out and schema.TYPE_NAME == "Schema"
    assert os.path.isfile(os.path.join(out, "schema.pbtxt"))
    assert "feature {" in open(os.path.join(out, "schema.pbtxt")).read()
    # It never touched MLMD: no store appeared anywhere under the scratch dir.
    assert not [f for f in fs.walk_files(str(tmp_path)) if f.endswith(".sqlite")]
    # The scratch dir of the run is gone.
    assert not os.path.exists(invocation.tmp_dir)


def test_launcher_reports_a_failed_node(tmp_path):
    invocation = _schema_gen_invocation(str(tmp_path / "out"))
    invocation.inputs["statistics"][0]["uri"] = str(tmp_path / "missing")
    request = tmp_path / "invocation.json"
    request.write_text(invocation.to_json())
    proc = subprocess.run([sys.executable, "-m", "conveyor.launch", str(request)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1
    result = InvocationResult.from_json(proc.stdout)
    assert not result.succeeded and result.outputs == {}
    assert result.error.startswith("schema_gen: ") and "missing" in result.error
    bad = tmp_path / "bad.json"
    bad.write_text('{"component_id": "x", "surprise": 1}')
    proc = subprocess.run([sys.executable, "-m", "conveyor.launch", str(bad)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "surprise" in proc.stderr


def test_a_serving_launcher_runs_the_one_request_it_reads(tmp_path):
    out = str(tmp_path / "schema_gen" / "schema" / "3")
    request = tmp_path / "invocation.json"
    request.write_text(_schema_gen_invocation(out).to_json())
    answer = tmp_path / "result.json"
    serve = [sys.executable, "-m", "conveyor.launch", "--serve"]
    line = json.dumps({"invocation": str(request), "result": str(answer)}) + "\n"
    proc = subprocess.run(serve, input=line, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    [schema] = InvocationResult.from_json(answer.read_text()).output_artifacts()["schema"]
    assert os.path.isfile(os.path.join(schema.uri, "schema.pbtxt"))
    # No request (the run needed no more nodes): nothing done, exit 0. A bad one: exit 2.
    idle = subprocess.run(serve, input="", capture_output=True, text=True, timeout=300)
    assert idle.returncode == 0 and idle.stdout == ""
    bad = subprocess.run(serve, input="{}\n", capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "cannot read the request" in bad.stderr


def test_execute_returns_outputs_and_leaves_the_callers_artifacts_alone(tmp_path):
    invocation = _schema_gen_invocation(str(tmp_path / "out"))
    before = json.dumps(invocation.outputs, sort_keys=True)
    result = execute(invocation)
    assert json.dumps(invocation.outputs, sort_keys=True) == before
    [schema] = result.output_artifacts()["schema"]
    assert schema.uri == str(tmp_path / "out")


def test_local_runner_launches_nodes_in_child_processes(tmp_path):
    penguin = os.path.join(example_dir("penguin"), "data")
    example_gen = CsvExampleGen(input_base=penguin)
    stats = StatisticsGen(examples=example_gen.outputs["examples"])
    schema = SchemaGen(statistics=stats.outputs["statistics"])
    pipeline = Pipeline("launched", str(tmp_path / "root"), [example_gen, stats, schema])
    lines: list[str] = []
    result = LocalRunner(launcher="process", echo=lines.append).run(pipeline)
    assert {n.state for n in result.nodes.values()} == {"COMPLETE"}, lines
    [examples] = result.outputs("csv_example_gen", "examples")
    assert examples.id is not None and examples.splits == ["train", "eval"]
    assert json.loads(examples.get("row_counts")) and sum(json.loads(examples.get("row_counts")).values()) == 334
    [out] = result.outputs("schema_gen", "schema")
    assert fs.is_complete(out.uri) and os.path.isfile(os.path.join(out.uri, "schema.pbtxt"))
    again = LocalRunner(launcher="process", echo=lines.append).run(pipeline)
    assert {n.state for n in again.nodes.values()} == {"CACHED"}


def test_function_component_from_a_pipeline_file_runs_in_a_child_process(tmp_path):
    pipeline_file = tmp_path / "pipeline.py"
    pipeline_file.write_text(
        "from conveyor import Pipeline\n"
        "from conveyor.artifacts import Schema\n"
        "from conveyor.components import component, OutputArtifact, Parameter\n"
        "@component\n"
        "def make(out: OutputArtifact[Schema], text: Parameter[str] = 'x') -> str:\n"
        "    open(out.uri + '/schema.pbtxt', 'w').write(text)\n"
        "    return 'made ' + text\n"
        f"pipeline = Pipeline('fn', {str(tmp_path / 'root')!r}, [make(text='hello')])\n"
    )
    from conveyor.cli import load_pipeline

    result = LocalRunner(launcher="process", echo=print).run(load_pipeline(str(pipeline_file)))
    [out] = result.outputs("make", "out")
    assert open(os.path.join(out.uri, "schema.pbtxt")).read() == "hello"


# -- code for remote workers --------------------------------------------------------------


@pytest.mark.parametrize("args,remote", [
    ([], False),
    (["--runner=DirectRunner", "--direct_num_workers=2"], False),
    (["--runner=DataflowRunner", "--project=p"], True),
    (["--runner=PortableRunner", "--job_endpoint=localhost:8099", "--environment_type=EXTERNAL",
      "--environment_config=localhost:50000"], False),
    (["--runner=PortableRunner", "--job_endpoint=flink.example.com:8099"], True),
    (["--runner=FlinkRunner", "--flink_master=10.0.0.5:8081"], True),
    (["--runner=PortableRunner", "--job_endpoint=localhost:8099", "--environment_type=DOCKER"], True),
])
def test_remote_workers(args, remote):
    assert (driver.remote_workers(args) is not None) == remote


def test_code_that_cannot_reach_remote_workers_is_refused_before_any_node(tmp_path):
    examples = Importer(
        source_uri=os.path.join(TESTDATA, "taxi", "example_gen", "examples"), artifact_type="Examples",
        properties={"split_names": '["train", "eval"]'}, custom_properties={"file_format": "parquet"},
    ).with_id("examples")
    schema = Importer(source_uri=os.path.join(TESTDATA, "taxi", "schema_gen", "schema"),
                      artifact_type="Schema").with_id("schema")
    transform = Transform(examples=examples.outputs["result"], schema=schema.outputs["result"],
                          module_file=TAXI_MODULE)
    pipeline = Pipeline("remote", str(tmp_path / "root"), [examples, schema, transform],
                        beam_pipeline_args=["--runner=DataflowRunner", "--project=p", "--region=r"])
    lines: list[str] = []
    with pytest.raises(PipelineDefinitionError, match=r"module file .*taxi_utils\.py cannot reach the Beam workers"
                       ) as raised:
        LocalRunner(echo=lines.append).run(pipeline)
    assert "s3://" in str(raised.value) and "gs://" in str(raised.value)
    assert lines == [] and not os.path.exists(tmp_path / "root")  # nothing ran, nothing was recorded
    # A Beam node without user code is refused too: its workers could not write a local root.
    stats = StatisticsGen(examples=examples.outputs["result"])
    with pytest.raises(PipelineDefinitionError, match="cannot read or write the pipeline's artifacts"):
        LocalRunner(echo=lines.append).run(Pipeline("remote2", str(tmp_path / "root2"), [examples, stats],
                                                    beam_pipeline_args=["--runner=DataflowRunner"]))
    # The same pipeline on a portable runner on this machine is fine (workers share the disk).
    local = ["--runner=PortableRunner", "--job_endpoint=localhost:8099", "--environment_type=EXTERNAL",
             "--environment_config=localhost:50000"]
    driver.check_code_reaches_workers([transform], str(tmp_path / "root"), lambda c: local)


def test_portable_runners_get_a_long_job_server_timeout():
    args = driver.beam_args_for("/root", {}, ["--runner=PortableRunner", "--job_endpoint=localhost:1"])
    assert "--job_server_timeout=86400" in args
    mine = driver.beam_args_for("/root", {}, ["--runner=FlinkRunner"], ["--job_server_timeout=5"])
    assert mine.count("--job_server_timeout=5") == 1 and "--job_server_timeout=86400" not in mine
    assert not any("job_server_timeout" in a for a in driver.beam_args_for("/root", {}, []))


def test_user_code_is_staged_under_a_remote_root_by_content(s3_env, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "helpers.py").write_text("VALUE = 41\n")
    (code / "module.py").write_text("import helpers\n\ndef preprocessing_fn(inputs):\n    return inputs\n")
    root = f"{s3_env.bucket('conveyor-staging')}/root"
    transform = Transform(examples=Channel(CsvExampleGen.OUTPUTS["examples"]), schema=Channel(Schema),
                          module_file=str(code / "module.py"))
    params = to_jsonable(transform.params)
    staged = driver.stage_user_code(transform, params, root)
    assert staged["module_file"].startswith(f"{root}/_code/") and staged["module_file"].endswith("/module.py")
    folder = fs.dirname(staged["module_file"])
    assert fs.read_text(fs.join(folder, "helpers.py")) == "VALUE = 41\n"
    assert fs.is_complete(folder)
    assert params["module_file"] == str(code / "module.py")  # the recorded parameter is the user's file
    assert driver.stage_user_code(transform, params, root) == staged  # same content, same place
    (code / "helpers.py").write_text("VALUE = 42\n")
    assert driver.stage_user_code(transform, params, root)["module_file"] != staged["module_file"]
    # A local root gets its snapshot too: what runs is what was hashed.
    local = driver.stage_user_code(transform, params, str(tmp_path / "local"))["module_file"]
    assert local.startswith(str(tmp_path / "local" / "_code")) and fs.read_text(local) == fs.read_text(
        str(code / "module.py"))


def test_a_staged_module_loads_from_the_object_store_with_its_siblings(s3_env, tmp_path):
    from conveyor.components.base import load_user_function

    code = tmp_path / "code"
    code.mkdir()
    (code / "siblings.py").write_text("FACTOR = 6\n")
    (code / "user_module.py").write_text("import siblings\n\ndef run_fn(x):\n    return x * siblings.FACTOR\n")
    root = f"{s3_env.bucket('conveyor-load')}/root"
    trainer = Trainer(examples=Channel(CsvExampleGen.OUTPUTS["examples"]), module_file=str(code / "user_module.py"))
    staged = driver.stage_user_code(trainer, to_jsonable(trainer.params), root)["module_file"]
    assert staged.startswith("s3://")
    fn = load_user_function("trainer", "run_fn", module_file=staged)
    assert fn(7) == 42
