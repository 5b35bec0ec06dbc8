"""Bad input stops a run before anything is published, with an error naming
the component, the file and what to do, and a FAILED execution in MLMD."""

from __future__ import annotations

import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
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
    assert "line 11 has 6 fields but the header has 5" in message
    _assert_failed_in_mlmd(tmp_path / "root", e.value, "penguins.csv", "line 11")
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


PENGUIN_COLUMNS = ["species", "culmen_length_mm", "culmen_depth_mm", "flipper_length_mm", "body_mass_g"]


@pytest.mark.parametrize(
    "written, configured, label",
    [(";", ",", "semicolon"), ("\t", ",", "tab"), ("|", ",", "pipe"), (",", ";", "comma")],
)
def test_csv_header_delimited_by_another_character(tmp_path, written, configured, label):
    """Read with the wrong delimiter, a header is one column named 'a;b;c':
    the run fails before anything is published, saying which delimiter the
    header looks written with, its columns, and the parameter to set."""
    data = tmp_path / "data"
    data.mkdir()
    text = open(PENGUIN_CSV).read().replace(",", written)
    (data / "penguins.csv").write_text(text)
    gen = CsvExampleGen(input_base=str(data), delimiter=configured)
    with pytest.raises(RunFailedError) as e:
        _quiet().run(Pipeline("bad", str(tmp_path / "root"), [gen]))
    path = data / "penguins.csv"
    header = written.join(PENGUIN_COLUMNS)
    assert str(e.value).endswith(
        f"csv_example_gen: The header of CSV file {path} looks {written!r}-delimited ({label}): split at "
        f"{written!r} it has the 5 columns {PENGUIN_COLUMNS}, and the first row as many fields, but with "
        f"delimiter {configured!r} it reads as 1 column {[header]}. Set delimiter={json.dumps(written)} on "
        f"CsvExampleGen if the file is {label}-separated, or fix the file."
    ), str(e.value)
    _assert_failed_in_mlmd(tmp_path / "root", e.value, str(path), f"delimiter={json.dumps(written)}")
    out_dir = tmp_path / "root" / "csv_example_gen" / "examples" / str(e.value.execution_id)
    assert not out_dir.exists() or not any(out_dir.iterdir())
    # Set as the error says, the same file runs.
    fixed = CsvExampleGen(input_base=str(data), delimiter=written)
    result = _quiet().run(Pipeline("fixed", str(tmp_path / "root"), [fixed]))
    [examples] = result.outputs("csv_example_gen", "examples")
    assert sum(json.loads(examples.get("row_counts")).values()) == 334


def test_names_holding_another_delimiter_are_not_mistaken_for_one(tmp_path):
    """A comma header where one name holds a '|' or a ';' (and values hold
    them too) is read as written: those characters give fewer columns."""
    data = tmp_path / "data"
    data.mkdir()
    rows = "".join(f'{i},"a|b;c",{i / 2}\n' for i in range(30))
    (data / "data.csv").write_text("id,tags|list;x,score\n" + rows)
    result = _quiet().run(Pipeline("ok", str(tmp_path / "root"), [CsvExampleGen(input_base=str(data))]))
    [examples] = result.outputs("csv_example_gen", "examples")
    table = pa.concat_tables(
        [pq.read_table(os.path.join(examples.uri, f"Split-{s}")) for s in examples.splits]
    )
    assert table.column_names == ["id", "tags|list;x", "score"]
    assert table.num_rows == 30 and set(table.column("tags|list;x").to_pylist()) == {"a|b;c"}


@pytest.mark.parametrize(
    "content, expected",
    [
        ("id,n\xe4me\n1,x\n".encode("latin-1"), "the header is not valid UTF-8 (byte 4: b'\\xe4')"),
        ("id,name\n1,caf\xe9\n2,ok\n".encode("latin-1"), "is not valid UTF-8"),
        (b"id,name\n", "has a header but no rows; expected at least one row"),
        (b"", "is empty (0 bytes); expected a header line and rows"),
    ],
    ids=["header-not-utf8", "value-not-utf8", "header-only", "empty"],
)
def test_csv_that_cannot_become_examples(tmp_path, content, expected):
    data = tmp_path / "data"
    data.mkdir()
    (data / "data.csv").write_bytes(content)
    with pytest.raises(RunFailedError) as e:
        _quiet().run(Pipeline("bad", str(tmp_path / "root"), [CsvExampleGen(input_base=str(data))]))
    assert f"CSV file {data / 'data.csv'}" in str(e.value) and expected in str(e.value), str(e.value)
    _assert_failed_in_mlmd(tmp_path / "root", e.value, expected)


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
