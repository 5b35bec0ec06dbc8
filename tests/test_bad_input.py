"""Bad input stops a run before anything is published, with an error naming
the component, the file and what to do, and a FAILED execution in MLMD."""

from __future__ import annotations

import os
import shutil

import pytest
from ml_metadata.proto import metadata_store_pb2 as pb

from conveyor import LocalRunner, Pipeline, RunFailedError
from conveyor.components import CsvExampleGen, ImportSchemaGen, SchemaGen, StatisticsGen, Trainer, Transform
from conveyor.metadata.store import ERROR, Metadata
from tests.examples import example_dir

PENGUIN_CSV = os.path.join(example_dir("penguin"), "data", "penguins_processed.csv")
PENGUIN_MODULE = os.path.join(example_dir("penguin"), "penguin_utils.py")


def _quiet():
    return LocalRunner(echo=lambda line: None)


def _assert_failed_in_mlmd(root, error: RunFailedError, *fragments: str) -> None:
    md = Metadata(os.path.join(str(root), "metadata.sqlite"))
    [e] = md.store.get_executions_by_id([error.execution_id])
    assert e.last_known_state == pb.Execution.FAILED
    recorded = e.custom_properties[ERROR].string_value
    for fragment in fragments:
        assert fragment in recorded, recorded
    outputs = [ev for ev in md.store.get_events_by_execution_ids([e.id]) if ev.type == pb.Event.OUTPUT]
    assert outputs == []


def test_csv_with_wrong_number_of_fields(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    lines = open(PENGUIN_CSV).read().splitlines()
    lines[10] += ",0.5"
    (data / "penguins.csv").write_text("\n".join(lines) + "\n")
    gen = CsvExampleGen(input_base=str(data))
    with pytest.raises(RunFailedError) as e:
        _quiet().run(Pipeline("bad", str(tmp_path / "root"), [gen]))
    message = str(e.value)
    assert "csv_example_gen" in message and "penguins.csv" in message
    _assert_failed_in_mlmd(tmp_path / "root", e.value, "penguins.csv")
    out_dir = tmp_path / "root" / "csv_example_gen" / "examples" / str(e.value.execution_id)
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_missing_and_empty_input(tmp_path):
    with pytest.raises(RunFailedError, match="csv_example_gen") as e:
        _quiet().run(Pipeline("bad", str(tmp_path / "root"), [CsvExampleGen(input_base=str(tmp_path / "nope"))]))
    assert "nope" in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "data.csv").write_text("")
    with pytest.raises(RunFailedError) as e:
        _quiet().run(Pipeline("bad", str(tmp_path / "root"), [CsvExampleGen(input_base=str(empty))]))
    assert "data.csv" in str(e.value)


def test_bad_schema_file(tmp_path):
    bad = tmp_path / "schema.pbtxt"
    bad.write_text("feature { name: 'a' type: INTEGER }\n")
    with pytest.raises(RunFailedError) as e:
        _quiet().run(Pipeline("bad", str(tmp_path / "root"), [ImportSchemaGen(schema_file=str(bad))]))
    assert "schema.pbtxt" in str(e.value) and "import_schema_gen" in str(e.value)
    _assert_failed_in_mlmd(tmp_path / "root", e.value, "schema.pbtxt")


@pytest.fixture(scope="module")
def penguin_upstream(tmp_path_factory):
    """ExampleGen, StatisticsGen, SchemaGen on penguins; the bad-module tests add to it."""
    root = tmp_path_factory.mktemp("penguin_bad")
    data = root / "data"
    data.mkdir()
    shutil.copy(PENGUIN_CSV, data / "penguins.csv")
    gen = CsvExampleGen(input_base=str(data))
    stats = StatisticsGen(examples=gen.outputs["examples"])
    schema = SchemaGen(statistics=stats.outputs["statistics"])
    return root, [gen, stats, schema]


def _run_with(root, upstream, *extra):
    return _quiet().run(Pipeline("penguin_bad", str(root / "root"), [*upstream, *extra]))


def _trainer_after_penguin_transform(gen, schema, module_file: str) -> tuple[Transform, Trainer]:
    transform = Transform(examples=gen.outputs["examples"], schema=schema.outputs["schema"], module_file=PENGUIN_MODULE)
    trainer = Trainer(
        module_file=module_file,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
    )
    return transform, trainer


def test_module_file_with_syntax_error_names_file_and_line(penguin_upstream):
    root, (gen, stats, schema) = penguin_upstream
    module = root / "broken_utils.py"
    module.write_text("def preprocessing_fn(inputs):\n    return {\n\nx = = 1\n")
    transform = Transform(examples=gen.outputs["examples"], schema=schema.outputs["schema"], module_file=str(module))
    with pytest.raises(RunFailedError) as e:
        _run_with(root, [gen, stats, schema], transform)
    assert e.value.component_id == "transform"
    assert "broken_utils.py" in str(e.value) and "line" in str(e.value)
    _assert_failed_in_mlmd(root / "root", e.value, "broken_utils.py")
    # What the upstream nodes published stays intact.
    md = Metadata(str(root / "root" / "metadata.sqlite"))
    for node in ("csv_example_gen", "statistics_gen", "schema_gen"):
        ctx = md.find_context("node", f"penguin_bad.{node}")
        assert md.store.get_artifacts_by_context(ctx.id)
        assert all(os.path.exists(a.uri) for a in md.store.get_artifacts_by_context(ctx.id))


def test_module_file_without_preprocessing_fn_or_run_fn(penguin_upstream):
    root, (gen, stats, schema) = penguin_upstream
    module = root / "empty_utils.py"
    module.write_text("def preprocessing_function(inputs):\n    return inputs\n")
    transform = Transform(examples=gen.outputs["examples"], schema=schema.outputs["schema"], module_file=str(module))
    with pytest.raises(RunFailedError) as e:
        _run_with(root, [gen, stats, schema], transform)
    assert "preprocessing_fn" in str(e.value) and "empty_utils.py" in str(e.value)

    good, trainer = _trainer_after_penguin_transform(gen, schema, str(module))
    with pytest.raises(RunFailedError) as e:
        _run_with(root, [gen, stats, schema], good, trainer)
    assert e.value.component_id == "trainer"
    assert "run_fn" in str(e.value) and "empty_utils.py" in str(e.value)
    _assert_failed_in_mlmd(root / "root", e.value, "run_fn")


def test_run_fn_that_writes_no_model(penguin_upstream):
    root, (gen, stats, schema) = penguin_upstream
    module = root / "lazy_utils.py"
    module.write_text("def run_fn(fn_args):\n    pass  # trains nothing, saves nothing\n")
    good, trainer = _trainer_after_penguin_transform(gen, schema, str(module))
    with pytest.raises(RunFailedError) as e:
        _run_with(root, [gen, stats, schema], good, trainer)
    assert e.value.component_id == "trainer"
    assert "serving_model_dir" in str(e.value) or "no model" in str(e.value).lower()
