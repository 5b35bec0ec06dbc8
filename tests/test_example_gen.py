"""CsvExampleGen and ImportExampleGen on real taxi and penguin data."""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import struct

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from tfx_bsl.coders import example_coder

from conveyor.artifacts import Examples
from conveyor.components import examples_io
from conveyor.components.base import ExecutionContext
from conveyor.components.example_gen import (
    CsvExampleGen,
    CsvExampleGenParams,
    ImportExampleGen,
    Input,
    InputSplit,
    Output,
    SplitBucket,
    SplitConfig,
    run_csv,
    run_import,
)
from conveyor.errors import ExecutorError, PipelineDefinitionError
from conveyor.pipeline import cache
from conveyor.pipeline.dsl import from_jsonable, to_jsonable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAXI_CSV = os.path.join(REPO, "examples", "taxi", "data", "data.csv")
PENGUIN_CSV = os.path.join(REPO, "examples", "penguin", "data", "penguins_processed.csv")
TESTDATA = os.path.join(REPO, "tests", "testdata", "taxi", "example_gen")
TFRECORD_DIR = os.path.join(TESTDATA, "import", "tfrecord")
PARQUET_DIR = os.path.join(TESTDATA, "import", "parquet")


def _run(component, out_dir: str) -> Examples:
    os.makedirs(out_dir, exist_ok=True)
    examples = Examples(out_dir)
    run = run_csv if isinstance(component, CsvExampleGen) else run_import
    run({}, {"examples": [examples]}, component.params, ExecutionContext(component_id=component.id))
    return examples


def _split_table(examples: Examples, split: str) -> pa.Table:
    files = examples_io.split_files(examples, split)
    assert files, f"no files in split {split}"
    return pa.concat_tables([pq.read_table(f) for f in files])


def _rows(table: pa.Table) -> list[tuple]:
    """The rows as sortable tuples (None sorts first)."""
    return sorted(
        (tuple((v is not None, v) for v in row.values()) for row in table.to_pylist()),
    )


def _reference_csv(path: str) -> pa.Table:
    """The CSV read whole, with the same rule for missing values."""
    return pcsv.read_csv(
        path, convert_options=pcsv.ConvertOptions(null_values=[""], strings_can_be_null=True)
    )


def _copy_taxi_rows(dst: str, start: int, stop: int) -> int:
    with open(TAXI_CSV) as f:
        lines = f.readlines()
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with open(dst, "w") as f:
        f.write(lines[0])
        f.writelines(lines[1 + start:1 + stop])
    return stop - start


def _write_tfrecord(path: str, records: list[bytes]) -> None:
    """An uncompressed TFRecord file (examples_io writes only gzipped ones)."""
    masked = examples_io.masked_crc
    with open(path, "wb") as f:
        for r in records:
            length = struct.pack("<Q", len(r))
            f.write(length + struct.pack("<I", masked(length)) + r + struct.pack("<I", masked(r)))


def _read_tfrecord(path: str) -> list[bytes]:
    out = []
    with gzip.open(path, "rb") as f:
        while header := f.read(12):
            (length,) = struct.unpack("<Q", header[:8])
            out.append(f.read(length))
            f.read(4)
    return out


# ---------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def taxi_examples(tmp_path_factory) -> Examples:
    gen = CsvExampleGen(input_base=os.path.dirname(TAXI_CSV))
    return _run(gen, str(tmp_path_factory.mktemp("taxi") / "examples"))


def test_csv_taxi_splits_two_to_one_and_keeps_every_row(taxi_examples):
    assert taxi_examples.splits == ["train", "eval"]
    train = _split_table(taxi_examples, "train")
    eval_ = _split_table(taxi_examples, "eval")
    assert train.num_rows + eval_.num_rows == 15002
    assert 0.30 < eval_.num_rows / 15002 < 0.37
    assert json.loads(taxi_examples.custom_properties["row_counts"]) == {
        "train": train.num_rows, "eval": eval_.num_rows,
    }
    # Same rows as the CSV, values and nulls alike.
    reference = _reference_csv(TAXI_CSV)
    both = pa.concat_tables([train, eval_])
    assert both.schema == reference.schema
    assert _rows(both) == _rows(reference)
    for name in reference.column_names:
        assert both.column(name).null_count == reference.column(name).null_count, name
    assert reference.column("pickup_latitude").null_count > 0
    types = dict(zip(both.schema.names, both.schema.types, strict=True))
    assert types["fare"] == pa.float64() and types["tips"] == pa.float64()
    assert types["trip_start_hour"] == pa.int64() and types["company"] == pa.string()


def test_csv_taxi_properties(taxi_examples):
    assert taxi_examples.properties["span"] == 0
    assert taxi_examples.properties["version"] == 0
    assert taxi_examples.custom_properties["file_format"] == "parquet"
    assert taxi_examples.custom_properties["input_base"] == os.path.dirname(TAXI_CSV)
    assert json.loads(taxi_examples.custom_properties["input_files"]) == {"single_split": [TAXI_CSV]}
    fingerprint = taxi_examples.custom_properties["input_fingerprint"]
    assert f"num_files:1,total_bytes:{os.path.getsize(TAXI_CSV)}" in fingerprint
    for split in ("train", "eval"):
        files = os.listdir(os.path.join(taxi_examples.uri, f"Split-{split}"))
        assert files == ["data-00000-of-00001.parquet"]
    # Nothing else is left in the output directory (no staging files).
    assert sorted(os.listdir(taxi_examples.uri)) == ["Split-eval", "Split-train"]


def test_csv_split_is_deterministic_and_matches_committed_testdata(taxi_examples, tmp_path):
    again = _run(CsvExampleGen(input_base=os.path.dirname(TAXI_CSV)), str(tmp_path / "again"))
    committed = Examples(os.path.join(TESTDATA, "examples"))
    with open(os.path.join(TESTDATA, "examples.json")) as f:
        record = json.load(f)
    committed.splits = json.loads(record["properties"]["split_names"])
    for split in ("train", "eval"):
        first = _split_table(taxi_examples, split)
        assert _split_table(again, split).equals(first)
        # The committed outputs other tests read are what the executor writes today.
        assert _split_table(committed, split).equals(first)


def test_csv_penguin(tmp_path):
    examples = _run(CsvExampleGen(input_base=os.path.dirname(PENGUIN_CSV)), str(tmp_path / "out"))
    reference = _reference_csv(PENGUIN_CSV)
    both = pa.concat_tables([_split_table(examples, s) for s in examples.splits])
    assert both.num_rows == reference.num_rows == 334
    assert _rows(both) == _rows(reference)
    assert both.schema.field("species").type == pa.int64()


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_csv_with_another_delimiter_gives_the_same_examples(tmp_path, delimiter):
    """2,000 taxi rows written with `delimiter` (fields holding it quoted)
    read as the comma file does: same types, same rows in the same splits."""
    comma = tmp_path / "comma"
    _copy_taxi_rows(str(comma / "data.csv"), 0, 2000)
    other = tmp_path / "other"
    other.mkdir()
    with open(comma / "data.csv", newline="") as f:
        rows = list(csv.reader(f))
    with open(other / "data.csv", "w", newline="") as f:
        csv.writer(f, delimiter=delimiter, lineterminator="\n").writerows(rows)
    assert (other / "data.csv").read_text().count(delimiter) >= 2000 * 17
    want = _run(CsvExampleGen(input_base=str(comma)), str(tmp_path / "want"))
    got = _run(CsvExampleGen(input_base=str(other), delimiter=delimiter), str(tmp_path / "got"))
    assert got.splits == want.splits == ["train", "eval"]
    assert got.get("row_counts") == want.get("row_counts")
    for split in want.splits:
        assert _split_table(got, split).schema == _split_table(want, split).schema
        assert _rows(_split_table(got, split)) == _rows(_split_table(want, split))
    assert sum(json.loads(got.get("row_counts")).values()) == 2000


def test_delimiter_is_a_parameter_in_the_cache_key(tmp_path):
    base = tmp_path / "data"
    _copy_taxi_rows(str(base / "data.csv"), 0, 10)
    comma, semicolon = CsvExampleGen(input_base=str(base)), CsvExampleGen(input_base=str(base), delimiter=";")
    assert comma.params.delimiter == ","
    before = cache.cache_key_parts(comma, {}, to_jsonable(comma.params))
    after = cache.cache_key_parts(semicolon, {}, to_jsonable(semicolon.params))
    assert before["parameter:delimiter"] == '","' and after["parameter:delimiter"] == '";"'
    assert cache.digest(before) != cache.digest(after)
    assert cache.explain_change(before, after) == ["parameter 'delimiter' changed (\",\" -> \";\")"]
    tab = CsvExampleGen(input_base=str(base), delimiter="\t").params
    assert from_jsonable(CsvExampleGenParams, json.loads(json.dumps(to_jsonable(tab)))) == tab


def test_tfrecord_output_holds_the_same_rows_as_tf_examples(tmp_path):
    gen = CsvExampleGen(input_base=os.path.dirname(PENGUIN_CSV), output_file_format="tfrecords_gzip")
    examples = _run(gen, str(tmp_path / "out"))
    assert examples.get("file_format") == "tfrecords_gzip"
    parquet = _run(CsvExampleGen(input_base=os.path.dirname(PENGUIN_CSV)), str(tmp_path / "parquet"))
    decoder = example_coder.ExamplesToRecordBatchDecoder()
    for split in examples.splits:
        files = examples_io.split_files(examples, split)
        assert files and all(f.endswith(".gz") for f in files)
        records = [r for f in files for r in _read_tfrecord(f)]
        decoded = decoder.DecodeBatch(records)
        expected = _split_table(parquet, split)
        assert decoded.num_rows == expected.num_rows
        species = [v[0] for v in decoded.column(decoded.schema.get_field_index("species")).to_pylist()]
        assert species == expected.column("species").to_pylist()


def test_unknown_output_file_format_suggests_name():
    with pytest.raises(PipelineDefinitionError, match="Did you mean 'parquet'"):
        CsvExampleGen(input_base="x", output_file_format="parquett")


def test_span_and_version_pick_the_latest(tmp_path):
    base = tmp_path / "data"
    _copy_taxi_rows(str(base / "span-1" / "ver-1" / "a.csv"), 0, 100)
    _copy_taxi_rows(str(base / "span-2" / "ver-1" / "a.csv"), 100, 300)
    expected = _copy_taxi_rows(str(base / "span-2" / "ver-2" / "a.csv"), 300, 600)
    _copy_taxi_rows(str(base / "span-2" / "ver-2" / "b.csv"), 600, 650)
    expected += 50
    _copy_taxi_rows(str(base / "span-x" / "ver-9" / "a.csv"), 0, 10)  # not digits: ignored
    gen = CsvExampleGen(
        input_base=str(base),
        input_config=Input(
            splits=[InputSplit(name="single_split", pattern="span-{SPAN}/ver-{VERSION}/*.csv")]
        ),
    )
    examples = _run(gen, str(tmp_path / "out"))
    assert examples.properties["span"] == 2
    assert examples.properties["version"] == 2
    total = sum(_split_table(examples, s).num_rows for s in examples.splits)
    assert total == expected
    files = json.loads(examples.custom_properties["input_files"])["single_split"]
    assert [os.path.relpath(p, base) for p in files] == ["span-2/ver-2/a.csv", "span-2/ver-2/b.csv"]


def test_span_width_and_span_without_version(tmp_path):
    base = tmp_path / "data"
    _copy_taxi_rows(str(base / "span-03.csv"), 0, 20)
    _copy_taxi_rows(str(base / "span-12.csv"), 20, 50)
    _copy_taxi_rows(str(base / "span-123.csv"), 50, 60)  # three digits: not {SPAN:2}
    gen = CsvExampleGen(
        input_base=str(base), input_config=Input(splits=[InputSplit("single_split", "span-{SPAN:2}.csv")])
    )
    examples = _run(gen, str(tmp_path / "out"))
    assert examples.properties["span"] == 12
    assert sum(_split_table(examples, s).num_rows for s in examples.splits) == 30

    gen = CsvExampleGen(
        input_base=str(base), input_config=Input(splits=[InputSplit("single_split", "span-{SPAN}.csv")])
    )
    examples = _run(gen, str(tmp_path / "out2"))
    assert examples.properties["span"] == 123
    assert sum(_split_table(examples, s).num_rows for s in examples.splits) == 10


def test_multiple_input_splits_pass_through(tmp_path):
    base = tmp_path / "data"
    n_train = _copy_taxi_rows(str(base / "train" / "part-0.csv"), 0, 900)
    n_train += _copy_taxi_rows(str(base / "train" / "part-1.csv"), 900, 1200)
    n_eval = _copy_taxi_rows(str(base / "eval" / "data.csv"), 1200, 1500)
    gen = CsvExampleGen(
        input_base=str(base),
        input_config=Input(splits=[InputSplit("train", "train/*"), InputSplit("eval", "eval/*")]),
    )
    examples = _run(gen, str(tmp_path / "out"))
    assert examples.splits == ["train", "eval"]
    train = _split_table(examples, "train")
    eval_ = _split_table(examples, "eval")
    assert (train.num_rows, eval_.num_rows) == (n_train, n_eval)
    assert _rows(eval_) == _rows(_reference_csv(str(base / "eval" / "data.csv")).cast(eval_.schema))
    assert train.schema == eval_.schema


def test_custom_buckets_and_partition_feature(tmp_path):
    gen = CsvExampleGen(
        input_base=os.path.dirname(TAXI_CSV),
        output_config=Output(split_config=SplitConfig(
            splits=[SplitBucket("train", 8), SplitBucket("eval", 1), SplitBucket("test", 1)],
            partition_feature_name="company",
        )),
    )
    examples = _run(gen, str(tmp_path / "out"))
    assert examples.splits == ["train", "eval", "test"]
    companies = {}
    total = 0
    for split in examples.splits:
        table = _split_table(examples, split)
        total += table.num_rows
        companies[split] = set(table.column("company").to_pylist())
    assert total == 15002
    # Rows sharing a company share a split.
    assert not (companies["train"] & companies["eval"]) and not (companies["train"] & companies["test"])
    assert not (companies["eval"] & companies["test"])
    assert all(companies.values())


def test_types_fixed_after_a_misleading_first_block(tmp_path):
    """A column that looks like int (or is empty) in the first blocks but
    holds a float (or text) much later gets the type of all its values."""
    base = tmp_path / "data"
    base.mkdir()
    with open(TAXI_CSV) as f:
        header, *rows = f.read().splitlines()
    body = rows * 3  # about 5.8 MB, several read blocks
    head = header + ",late_float,late_text"
    lines = [head] + [r + ",7," for r in body]
    lines.append(body[0] + ",7.5,hello")
    (base / "big.csv").write_text("\n".join(lines) + "\n")
    examples = _run(CsvExampleGen(input_base=str(base)), str(tmp_path / "out"))
    both = pa.concat_tables([_split_table(examples, s) for s in examples.splits])
    assert both.num_rows == len(body) + 1
    assert both.schema.field("late_float").type == pa.float64()
    assert both.schema.field("late_text").type == pa.string()
    assert both.schema.field("fare").type == pa.float64()
    assert sorted(set(both.column("late_float").to_pylist())) == [7.0, 7.5]
    assert both.column("late_text").null_count == len(body)
    assert sorted(os.listdir(examples.uri)) == ["Split-eval", "Split-train"]


# ---------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------


def _decoded(records: list[bytes]) -> pa.RecordBatch:
    return example_coder.ExamplesToRecordBatchDecoder().DecodeBatch(records)


@pytest.mark.parametrize("gzipped", [True, False])
def test_import_tfrecord(tmp_path, gzipped):
    source = os.path.join(TFRECORD_DIR, "data_tfrecord-00000-of-00001.gz")
    records = _read_tfrecord(source)
    base = tmp_path / "data"
    base.mkdir()
    if gzipped:
        shutil.copy(source, base)
    else:
        _write_tfrecord(str(base / "data.tfrecord"), records)
    examples = _run(ImportExampleGen(input_base=str(base)), str(tmp_path / "out"))
    train = _split_table(examples, "train")
    eval_ = _split_table(examples, "eval")
    assert train.num_rows + eval_.num_rows == len(records) == 2000
    assert 0.28 < eval_.num_rows / len(records) < 0.39
    both = pa.concat_tables([train, eval_])
    assert both.schema.field("fare").type == pa.float64()
    assert both.schema.field("company").type == pa.string()
    assert both.schema.field("trip_start_hour").type == pa.int64()
    # Each value is the record's own: compare a float, an int and a string feature.
    reference = _decoded(records)
    for name in ("fare", "trip_start_hour", "company"):
        column = reference.column(reference.schema.get_field_index(name)).to_pylist()
        expected = [v[0] if v else None for v in column]
        if name == "company":
            expected = [v.decode() if v is not None else None for v in expected]
        got = both.column(name).to_pylist()
        assert sorted(got, key=lambda v: (v is not None, v)) == sorted(
            expected, key=lambda v: (v is not None, v)
        )
    assert both.column("company").null_count == sum(1 for v in expected if v is None) > 0


def _encode(columns: dict[str, pa.Array]) -> list[bytes]:
    batch = pa.RecordBatch.from_arrays(list(columns.values()), names=list(columns))
    return example_coder.RecordBatchToExamplesEncoder().encode(batch)


def test_import_tfrecord_lists_bytes_and_missing_features(tmp_path):
    """A feature with several values in some row stays a list column; bytes
    that are not UTF-8 stay binary; a feature only some files have is null
    elsewhere."""
    base = tmp_path / "data"
    base.mkdir()
    first = _encode({
        "multi": pa.array([[1], [2, 3], None, []], pa.large_list(pa.int64())),
        "raw": pa.array([[b"\xff"], [b"ok"], [b"x"], None], pa.large_list(pa.large_binary())),
        "f": pa.array([[1.5], None, [2.5], [3.25]], pa.large_list(pa.float32())),
    })
    second = _encode({"f": pa.array([[4.0]], pa.large_list(pa.float32())),
                      "late": pa.array([[b"hi"]], pa.large_list(pa.large_binary()))})
    _write_tfrecord(str(base / "a.tfrecord"), first)
    _write_tfrecord(str(base / "b.tfrecord"), second)
    gen = ImportExampleGen(
        input_base=str(base), output_config=Output(split_config=SplitConfig(splits=[SplitBucket("all", 1)]))
    )
    examples = _run(gen, str(tmp_path / "out"))
    table = _split_table(examples, "all")
    assert dict(zip(table.schema.names, map(str, table.schema.types), strict=True)) == {
        "f": "double", "late": "string", "multi": "large_list<item: int64>", "raw": "binary",
    }
    rows = sorted(table.to_pylist(), key=lambda r: r["f"] if r["f"] is not None else -1)
    assert rows == [
        {"f": None, "late": None, "multi": [2, 3], "raw": b"ok"},
        {"f": 1.5, "late": None, "multi": [1], "raw": b"\xff"},
        {"f": 2.5, "late": None, "multi": None, "raw": b"x"},
        {"f": 3.25, "late": None, "multi": [], "raw": None},
        {"f": 4.0, "late": "hi", "multi": None, "raw": None},
    ]


def test_bad_tfrecord_feature_changes_type(tmp_path):
    base = tmp_path / "data"
    base.mkdir()
    _write_tfrecord(str(base / "a.tfrecord"), _encode({"x": pa.array([[1]], pa.large_list(pa.int64()))}))
    _write_tfrecord(str(base / "b.tfrecord"), _encode({"x": pa.array([[1.0]], pa.large_list(pa.float32()))}))
    _fails(
        ImportExampleGen(input_base=str(base)), tmp_path,
        "feature 'x' holds int64_list", "float_list in " + str(base / "b.tfrecord"),
    )


def test_import_parquet(tmp_path):
    examples = _run(
        ImportExampleGen(input_base=PARQUET_DIR, payload_format="parquet"), str(tmp_path / "out")
    )
    source = pq.read_table(os.path.join(PARQUET_DIR, "data.parquet")).replace_schema_metadata(None)
    both = pa.concat_tables([_split_table(examples, s) for s in examples.splits])
    assert both.num_rows == source.num_rows == 10000
    assert both.schema == source.schema
    assert _rows(both) == _rows(source)
    eval_rows = _split_table(examples, "eval").num_rows
    assert 0.30 < eval_rows / 10000 < 0.37


# ---------------------------------------------------------------------------
# Bad input: a clear ExecutorError, and nothing written.
# ---------------------------------------------------------------------------


def _fails(component, tmp_path, *expected: str) -> str:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    with pytest.raises(ExecutorError) as info:
        _run(component, str(out))
    message = str(info.value)
    assert message.startswith(f"{component.id}: "), message
    for text in expected:
        assert text in message, message
    assert os.listdir(out) == [], "the executor left files behind"
    return message


def test_bad_input_base_missing(tmp_path):
    _fails(CsvExampleGen(input_base=str(tmp_path / "nowhere")), tmp_path, "nowhere", "not a directory")


def test_bad_no_file_matches(tmp_path):
    base = tmp_path / "data"
    _copy_taxi_rows(str(base / "a.txt"), 0, 10)
    gen = CsvExampleGen(
        input_base=str(base), input_config=Input(splits=[InputSplit("single_split", "*.csv")])
    )
    _fails(gen, tmp_path, "no file matches pattern '*.csv'", "a.txt")


def test_bad_empty_files(tmp_path):
    base = tmp_path / "data"
    base.mkdir()
    (base / "empty.csv").write_text("")
    _fails(CsvExampleGen(input_base=str(base)), tmp_path, str(base / "empty.csv"), "0 bytes")
    (base / "empty.csv").write_text("a,b,c\n")
    _fails(CsvExampleGen(input_base=str(base)), tmp_path, str(base / "empty.csv"), "no rows")


def test_bad_header_only_file_among_good_ones(tmp_path):
    base = tmp_path / "data"
    _copy_taxi_rows(str(base / "a.csv"), 0, 500)
    _copy_taxi_rows(str(base / "b.csv"), 0, 0)
    _fails(CsvExampleGen(input_base=str(base)), tmp_path, str(base / "b.csv"), "no rows")


def test_bad_row_with_wrong_field_count(tmp_path):
    base = tmp_path / "data"
    _copy_taxi_rows(str(base / "a.csv"), 0, 3000)
    with open(base / "a.csv") as f:
        lines = f.readlines()
    lines[2000] = "1,2,3\n"
    (base / "a.csv").write_text("".join(lines))
    _fails(
        CsvExampleGen(input_base=str(base)), tmp_path,
        str(base / "a.csv"), "line 2001", "3 fields but the header has 18", "'1,2,3'",
    )


def test_bad_headers_differ(tmp_path):
    base = tmp_path / "data"
    _copy_taxi_rows(str(base / "a.csv"), 0, 10)
    (base / "b.csv").write_text("x,y\n1,2\n")
    _fails(CsvExampleGen(input_base=str(base)), tmp_path, str(base / "b.csv"), "same header")


def test_bad_tfrecord_not_tf_example(tmp_path):
    base = tmp_path / "data"
    base.mkdir()
    records = _read_tfrecord(os.path.join(TFRECORD_DIR, "data_tfrecord-00000-of-00001.gz"))[:20]
    records[13] = b"\xff\xff this is not a tf.Example"
    _write_tfrecord(str(base / "data.tfrecord"), records)
    _fails(
        ImportExampleGen(input_base=str(base)), tmp_path,
        str(base / "data.tfrecord"), "record #13 is not a serialized tf.Example",
    )


def test_bad_tfrecord_is_really_csv(tmp_path):
    base = tmp_path / "data"
    _copy_taxi_rows(str(base / "data.csv"), 0, 10)
    _fails(ImportExampleGen(input_base=str(base)), tmp_path, str(base / "data.csv"), "not a TFRecord file")


def test_bad_tfrecord_empty(tmp_path):
    base = tmp_path / "data"
    base.mkdir()
    with gzip.open(base / "data.gz", "wb"):
        pass
    _fails(ImportExampleGen(input_base=str(base)), tmp_path, str(base / "data.gz"), "no records")


def test_bad_parquet(tmp_path):
    base = tmp_path / "data"
    _copy_taxi_rows(str(base / "data.csv"), 0, 10)
    _fails(
        ImportExampleGen(input_base=str(base), payload_format="parquet"), tmp_path,
        str(base / "data.csv"), "not a Parquet file",
    )


def test_bad_spans_differ_between_splits(tmp_path):
    base = tmp_path / "data"
    _copy_taxi_rows(str(base / "train-2.csv"), 0, 10)
    _copy_taxi_rows(str(base / "eval-1.csv"), 10, 20)
    gen = CsvExampleGen(
        input_base=str(base),
        input_config=Input(
            splits=[InputSplit("train", "train-{SPAN}.csv"), InputSplit("eval", "eval-{SPAN}.csv")]
        ),
    )
    _fails(gen, tmp_path, "'train': span 2", "'eval': span 1")


def test_bad_partition_feature(tmp_path):
    gen = CsvExampleGen(
        input_base=os.path.dirname(TAXI_CSV),
        output_config=Output(split_config=SplitConfig(
            splits=[SplitBucket("train", 1), SplitBucket("eval", 1)], partition_feature_name="compnay")),
    )
    _fails(gen, tmp_path, "'compnay' is not a column")


# ---------------------------------------------------------------------------
# Wiring mistakes fail at construction.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(input_config=Input(splits=[InputSplit("a", "a/*"), InputSplit("b", "b/*")]),
              output_config=Output(split_config=SplitConfig(splits=[SplitBucket("train", 1)]))),
         "leave output_config.split_config unset"),
        (dict(input_config=Input(splits=[InputSplit("a", "v-{VERSION}/*")])), "without {SPAN}"),
        (dict(input_config=Input(splits=[InputSplit("a", "s-{SPAN}/*"), InputSplit("b", "b/*")])),
         "every input split pattern has {SPAN} or none"),
        (dict(output_config=Output(split_config=SplitConfig(splits=[SplitBucket("train", 0)]))),
         "positive int"),
        (dict(output_config=Output(split_config=SplitConfig(
            splits=[SplitBucket("train", 1), SplitBucket("train", 1)]))), "unique"),
        (dict(input_config=Input(splits=[])), "no splits"),
        (dict(input_config=Input(splits=[InputSplit("a", "{DATE}/*")])), "unknown spec"),
        (dict(input_config="*.csv"), "expects Input"),
        (dict(delimiter=";;"), "delimiter ';;' must be one ASCII character"),
        (dict(delimiter=""), "delimiter '' must be one ASCII character"),
        (dict(delimiter='"'), "other than a double quote or a line break"),
        (dict(delimiter="\n"), "delimiter '\\n' must be one ASCII character"),
        (dict(delimiter="§"), "delimiter '§' must be one ASCII character"),
        (dict(delimiter=44), "parameter 'delimiter' expects str"),
    ],
)
def test_definition_errors(kwargs, expected):
    with pytest.raises(PipelineDefinitionError) as info:
        CsvExampleGen(input_base="/data", **kwargs)
    assert expected in str(info.value)


def test_import_payload_format_checked():
    with pytest.raises(PipelineDefinitionError, match="payload_format 'csv'"):
        ImportExampleGen(input_base="/data", payload_format="csv")


def test_external_fingerprints_follow_the_input_files(tmp_path):
    base = tmp_path / "data"
    _copy_taxi_rows(str(base / "span-1.csv"), 0, 10)
    _copy_taxi_rows(str(base / "span-2.csv"), 0, 10)
    gen = CsvExampleGen(input_base=str(base), input_config=Input(splits=[InputSplit("s", "span-{SPAN}.csv")]))
    first = gen.external_fingerprints()
    assert set(first) == {"s"}
    (base / "span-1.csv").write_text("changed,but\nnot,read\n")  # an older span: no change
    assert gen.external_fingerprints() == first
    _copy_taxi_rows(str(base / "span-2.csv"), 10, 20)  # the latest span's content changes
    second = gen.external_fingerprints()
    assert second != first
    _copy_taxi_rows(str(base / "span-3.csv"), 10, 20)  # same content, but a new span
    assert gen.external_fingerprints() not in (first, second)
    assert CsvExampleGen(input_base=str(tmp_path / "missing")).external_fingerprints() == {}


def test_external_fingerprints_come_from_file_stats_not_content(tmp_path):
    """The fingerprint is what the filesystem reports (relative path, size,
    mtime, checksum), so caching never reads the input. A changed file with a
    new mtime re-runs ExampleGen; a file rewritten in place with the same size
    and mtime is not noticed (the documented limitation: touch it or run with
    --no-cache)."""
    base = tmp_path / "data"
    path = base / "data.csv"
    _copy_taxi_rows(str(path), 0, 50)
    gen = CsvExampleGen(input_base=str(base))
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 10_000_000_000))
    first = gen.external_fingerprints()

    # (a) Same size, different bytes, new modification time: a new fingerprint.
    content = path.read_bytes()
    changed = content.replace(b",", b";", 1)
    assert len(changed) == len(content) and changed != content
    path.write_bytes(changed)
    second = gen.external_fingerprints()
    assert second != first

    # (b) Different bytes again, size and mtime restored: the same fingerprint,
    # so the files were not read.
    st = os.stat(path)
    path.write_bytes(content.replace(b",", b"|", 1))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert gen.external_fingerprints() == second
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # touched: noticed
    assert gen.external_fingerprints() not in (first, second)

    # Renaming a file changes it too (the path relative to input_base counts).
    path.rename(base / "other.csv")
    assert gen.external_fingerprints() not in (first, second)


def test_hash_split_is_independent_of_batching(tmp_path):
    """The same rows land in the same split whether they are read as one file
    or as several (other batch boundaries)."""
    base = tmp_path / "data"
    for i in range(5):
        _copy_taxi_rows(str(base / f"part-{i}.csv"), i * 3000, 15002 if i == 4 else (i + 1) * 3000)
    split_files = _run(CsvExampleGen(input_base=str(base)), str(tmp_path / "out"))
    whole = _run(CsvExampleGen(input_base=os.path.dirname(TAXI_CSV)), str(tmp_path / "whole"))
    for split in ("train", "eval"):
        assert _rows(_split_table(split_files, split)) == _rows(_split_table(whole, split))
    assert np.isclose(
        _split_table(whole, "train").num_rows / 15002, 2 / 3, atol=0.03
    )
