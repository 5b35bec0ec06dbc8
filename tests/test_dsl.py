"""The DSL checks wiring when a pipeline is built."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conveyor import Pipeline, PipelineDefinitionError
from conveyor.artifacts import Examples, Model, Schema
from conveyor.pipeline.compiler import compile_pipeline
from conveyor.pipeline.dsl import Channel
from tests.lightweight import count_rows, make_rows


def test_wrong_artifact_type_names_component_input_and_expected_type():
    rows = make_rows()
    with pytest.raises(PipelineDefinitionError) as e:
        count_rows(examples=Channel(Schema), id="counter")
    msg = str(e.value)
    assert "'counter'" in msg and "'examples'" in msg and "expects Examples" in msg and "Schema" in msg
    # A channel of the right type from the same component works.
    count_rows(examples=rows.outputs["rows"])


def test_wrong_type_suggests_matching_output_of_producer():
    counter = count_rows(examples=make_rows().outputs["rows"])
    with pytest.raises(PipelineDefinitionError, match="expects Examples, got a channel of Model"):
        count_rows(examples=counter.outputs["model"])


def test_missing_required_input():
    with pytest.raises(PipelineDefinitionError, match="missing its required input 'examples'"):
        count_rows()


def test_unknown_parameter_suggests_closest_name():
    with pytest.raises(PipelineDefinitionError) as e:
        make_rows(nn=3)
    assert "unknown argument 'nn'" in str(e.value)
    assert "Did you mean 'n'?" in str(e.value)


def test_parameter_of_wrong_type():
    with pytest.raises(PipelineDefinitionError, match="parameter 'n' expects int, got str"):
        make_rows(n="three")


def test_passing_a_component_instead_of_its_output():
    rows = make_rows()
    with pytest.raises(PipelineDefinitionError, match=r"outputs\['rows'\]"):
        count_rows(examples=rows)


def test_cycle_is_rejected_naming_it():
    a = make_rows()
    b = count_rows(examples=a.outputs["rows"])
    c = count_rows(examples=a.outputs["rows"], id="c")
    # Rewire b to read c's output and c to read b's: a cycle b -> c -> b.
    b.inputs["examples"] = Channel(Examples, c, "model")
    c.inputs["examples"] = Channel(Examples, b, "model")
    with pytest.raises(PipelineDefinitionError, match="cycle"):
        Pipeline("p", "/tmp/unused", [a, b, c])


def test_duplicate_ids_and_missing_upstream():
    a = make_rows()
    with pytest.raises(PipelineDefinitionError, match="two components with id 'make_rows'"):
        Pipeline("p", "/tmp/unused", [a, make_rows()])
    b = count_rows(examples=a.outputs["rows"])
    with pytest.raises(PipelineDefinitionError, match="not in pipeline"):
        Pipeline("p", "/tmp/unused", [b])


def test_components_ordered_by_dependency():
    a = make_rows()
    b = count_rows(examples=a.outputs["rows"])
    p = Pipeline("p", "/tmp/unused", [b, a])
    assert [c.id for c in p.components] == ["make_rows", "count_rows"]


def test_compile_is_serializable_ir():
    a = make_rows(n=7)
    b = count_rows(examples=a.outputs["rows"])
    ir = compile_pipeline(Pipeline("p", "/tmp/unused", [a, b], beam_pipeline_args=["--x=1"]))
    text = json.dumps(ir)
    back = json.loads(text)
    assert back["nodes"][0]["parameters"] == {"n": 7}
    assert back["nodes"][1]["inputs"]["examples"] == {"type": "Examples", "producer": "make_rows", "output_key": "rows"}
    assert back["nodes"][1]["outputs"] == {"model": Model.TYPE_NAME}
    assert back["pipeline"]["beam_pipeline_args"] == ["--x=1"]


def test_building_the_taxi_pipeline_imports_no_tensorflow():
    code = (
        "import runpy, sys; runpy.run_path('examples/taxi/pipeline.py', run_name='x');"
        "heavy=[m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow','tensorflow_data_validation','tensorflow_transform','tensorflow_model_analysis')];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_importing_conveyor_changes_nothing_in_the_process():
    code = (
        "import os, sys; env = dict(os.environ); path = list(sys.path);"
        "import conveyor, conveyor.components, conveyor.pipeline.runner, conveyor.launch;"
        "from conveyor.components import CsvExampleGen, Trainer, Transform, Evaluator;"
        "changed = {k for k in set(env) | set(os.environ) if env.get(k) != os.environ.get(k)};"
        "print(sorted(changed), sys.path == path); sys.exit(1 if changed or sys.path != path else 0)"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
