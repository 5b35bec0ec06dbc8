"""ExampleGen as Beam pipelines: CSV files read in line-aligned byte ranges
(quoted newlines, CRLF, ranges shorter than a line, a type or a bad row found
by a worker), the same rows in the same splits as the pre-Beam executor's
committed outputs, Beam's portable runner (workers in other processes) and
S3 input and output."""

from __future__ import annotations

import csv
import io
import json
import os
import random

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from conveyor import fs
from conveyor.artifacts import Examples
from conveyor.components import examples_io
from conveyor.components.base import ExecutionContext
from conveyor.components.example_gen import CsvExampleGen, ImportExampleGen, csv_input, run_csv, run_import
from conveyor.components.example_gen.inputs import RetryNeeded
from conveyor.errors import ExecutorError
from tests.portable import PortableServices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTDATA = os.path.join(REPO, "tests", "testdata")
DATA = {name: os.path.join(REPO, "examples", name, "data") for name in ("taxi", "penguin")}
TFRECORD_DIR = os.path.join(TESTDATA, "taxi", "example_gen", "import", "tfrecord")


def _run(component, uri: str, beam_args: list[str] | None = None) -> Examples:
    fs.makedirs(uri)
    examples = Examples(uri)
    run = run_csv if isinstance(component, CsvExampleGen) else run_import
    ctx = ExecutionContext(component_id=component.id, beam_pipeline_args=list(beam_args or []))
    run({}, {"examples": [examples]}, component.params, ctx)
    return examples


def _table(examples: Examples, split: str) -> pa.Table:
    tables = []
    for path in examples_io.split_files(examples, split):
        filesystem, inner = fs.arrow_filesystem(path)
        tables.append(pq.read_table(inner, filesystem=filesystem))
    return pa.concat_tables(tables)


def _rows(table: pa.Table) -> list[tuple]:
    return sorted(tuple((v is not None, v) for v in row.values()) for row in table.to_pylist())


def _reference(path: str, delimiter: str = ",") -> pa.Table:
    """The whole file read by pyarrow, with ExampleGen's rule for missing values."""
    return pcsv.read_csv(
        path, parse_options=pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
        convert_options=pcsv.ConvertOptions(null_values=[""], strings_can_be_null=True),
    )


@pytest.fixture()
def small_ranges(monkeypatch):
    """Byte ranges of `size` bytes (planned on the driver, so the workers of
    any runner read them)."""
    def set_size(size: int) -> None:
        monkeypatch.setattr(csv_input, "RANGE_BYTES", size)
    return set_size


def test_a_buffer_is_cut_at_newlines_into_whole_lines():
    data = pa.py_buffer(b"".join(b"row%d,x\n" % i for i in range(10_000)))
    for n in (1, 2, 3, 7):
        pieces = csv_input._cut_at_newlines(data, n)
        assert len(pieces) == n
        assert b"".join(p.to_pybytes() for p in pieces) == data.to_pybytes()
        assert all(p.to_pybytes().endswith(b"\n") for p in pieces)
    one_line = pa.py_buffer(b"a,b\n" + b"x" * 300_000 + b"\n")  # no newline after the middle but the last
    assert [p.size for p in csv_input._cut_at_newlines(one_line, 2)] == [one_line.size]


def _committed(name: str) -> tuple[Examples, dict]:
    with open(os.path.join(TESTDATA, name, "example_gen", "examples.json")) as f:
        record = json.load(f)
    examples = Examples(os.path.join(TESTDATA, name, "example_gen", "examples"))
    examples.splits = json.loads(record["properties"]["split_names"])
    return examples, json.loads(record["custom_properties"]["row_counts"])


# ---------------------------------------------------------------------------
# The same rows in the same splits as before.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["taxi", "penguin"])
@pytest.mark.parametrize("range_bytes, parse_block", [(None, None), (40_000, None), (None, 4096)])
def test_same_splits_as_the_pre_beam_executor(name, range_bytes, parse_block, small_ranges, monkeypatch,
                                              tmp_path):
    """tests/testdata/<name>/example_gen was written by the executor before it
    ran on Beam: every split holds the same rows, also when each file is
    read in many byte ranges, and when a range is cut at newlines into
    pieces parsed side by side (a range over twice the parse block)."""
    if range_bytes:
        small_ranges(range_bytes)
    if parse_block:
        monkeypatch.setattr(csv_input, "_PARSE_BLOCK", parse_block)
    examples = _run(CsvExampleGen(input_base=DATA[name]), str(tmp_path / "out"))
    committed, counts = _committed(name)
    assert examples.splits == committed.splits
    assert json.loads(examples.get("row_counts")) == counts
    for split in committed.splits:
        got, want = _table(examples, split), _table(committed, split)
        assert got.schema == want.schema
        assert _rows(got) == _rows(want)


# ---------------------------------------------------------------------------
# Byte ranges of CSV files.
# ---------------------------------------------------------------------------


def _quoted_csv(path: str, rows: int, newlines: bool, line_end: str = "\n", delimiter: str = ",") -> None:
    rng = random.Random(7)
    words = ["plain", "with, comma", 'say "hi"', "", "ünïcode", "tab\there"]
    if newlines:
        words += ["two\nlines", "three\nshort\nlines", 'quote "and"\nnewline', "ends with newline\n"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=line_end, delimiter=delimiter)
    writer.writerow(["id", "note", "value", "tag"])
    for i in range(rows):
        writer.writerow([i, rng.choice(words), rng.choice(["", f"{rng.random():.4f}"]), rng.choice(words)])
    with open(path, "w", newline="", encoding="utf-8") as f:
        f.write(out.getvalue())


def _plan_and_read(
    path: str, range_bytes: int, delimiter: str = ","
) -> tuple[list[csv_input.CsvRange], list, list[str]]:
    """Each range of a file read alone, as a worker reads it: (ranges,
    batches of the ranges read, paths of ranges that asked to be resplit)."""
    plan = csv_input.plan_csv({"single_split": [path]}, delimiter)
    reader = csv_input.CsvReader(tuple(plan.names), plan.schema(plan.sample_kinds), delimiter=delimiter)
    ranges = plan.ranges(range_bytes=range_bytes)
    batches, resplit = [], []
    for item in ranges:
        try:
            batches += list(reader.batches(item))
        except RetryNeeded as e:
            assert e.kind == "resplit"
            resplit.append(e.detail)
    return ranges, batches, resplit


def test_ranges_split_quoted_fields_without_newlines(tmp_path):
    """Quoted fields (commas, escaped quotes) but no newline inside one: every
    range is read on its own, and together they hold the file's rows."""
    path = str(tmp_path / "quoted.csv")
    _quoted_csv(path, 3000, newlines=False)
    ranges, batches, resplit = _plan_and_read(path, 2000)
    assert len(ranges) > 30 and resplit == []
    assert _rows(pa.Table.from_batches(batches)) == _rows(_reference(path))


def test_a_range_that_cuts_a_quoted_newline_asks_for_the_whole_file(tmp_path):
    path = str(tmp_path / "multiline.csv")
    _quoted_csv(path, 3000, newlines=True)
    _, _, resplit = _plan_and_read(path, 2000)
    assert resplit and set(resplit) == {path}


@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
def test_csv_with_quoted_newlines_in_many_ranges(small_ranges, tmp_path, line_end):
    """A file whose ranges cut quoted fields holding newlines is read whole;
    another one beside it is still read in ranges; every row arrives once,
    as pyarrow reads the whole file, in the split it gets unsplit."""
    base = tmp_path / "data"
    base.mkdir()
    _quoted_csv(str(base / "a.csv"), 2500, newlines=True, line_end=line_end)
    _quoted_csv(str(base / "b.csv"), 2500, newlines=False, line_end=line_end)
    whole = _run(CsvExampleGen(input_base=str(base)), str(tmp_path / "whole"))
    small_ranges(1500)
    ranged = _run(CsvExampleGen(input_base=str(base)), str(tmp_path / "ranged"))
    reference = pa.concat_tables([_reference(str(base / "a.csv")), _reference(str(base / "b.csv"))])
    both = pa.concat_tables([_table(ranged, s) for s in ranged.splits])
    assert _rows(both.cast(reference.schema)) == _rows(reference)
    assert any("\n" in (v or "") for v in both.column("note").to_pylist())
    for split in ("train", "eval"):
        assert _rows(_table(ranged, split)) == _rows(_table(whole, split))


def test_tab_separated_quoted_newlines_in_many_ranges(small_ranges, tmp_path):
    """delimiter="\t" reaches every reader: the driver's sample, the workers'
    byte ranges and the whole-file read of a file whose ranges cut a quoted
    newline; a quoted field may hold a tab."""
    base = tmp_path / "data"
    base.mkdir()
    _quoted_csv(str(base / "a.tsv"), 2500, newlines=True, delimiter="\t")
    _quoted_csv(str(base / "b.tsv"), 2500, newlines=False, delimiter="\t")
    _, batches, resplit = _plan_and_read(str(base / "b.tsv"), 1500, delimiter="\t")
    assert resplit == [] and _rows(pa.Table.from_batches(batches)) == _rows(_reference(str(base / "b.tsv"), "\t"))
    assert set(_plan_and_read(str(base / "a.tsv"), 1500, delimiter="\t")[2]) == {str(base / "a.tsv")}
    small_ranges(1500)
    ranged = _run(CsvExampleGen(input_base=str(base), delimiter="\t"), str(tmp_path / "ranged"))
    reference = pa.concat_tables([_reference(str(base / "a.tsv"), "\t"), _reference(str(base / "b.tsv"), "\t")])
    assert reference.column_names == ["id", "note", "value", "tag"] and reference.num_rows == 5000
    both = pa.concat_tables([_table(ranged, s) for s in ranged.splits])
    assert _rows(both.cast(reference.schema)) == _rows(reference)
    notes = both.column("note").to_pylist()
    assert "tab\there" in notes and "three\nshort\nlines" in notes


@pytest.mark.parametrize("rows, range_bytes", [(3000, None), (150_000, None), (150_000, 512 << 10)])
@pytest.mark.parametrize("fields", [["extra"], None])
def test_a_ragged_row_holding_a_quoted_newline_names_its_line(small_ranges, tmp_path, rows, range_bytes, fields):
    """A row with one field too many (or too few) that spans two lines, after
    rows holding quoted newlines: the error names the file and the line the
    row starts on, whether the driver's sample holds it (a small file) or a
    worker finds it (in one range, or in a file whose ranges cut quoted
    newlines and is read whole)."""
    base = tmp_path / "data"
    base.mkdir()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "note", "value"])
    bad = rows - 10
    for i in range(rows):
        row = [i, ["two\nlines", "plain", "x, y"][i % 3], i / 4]
        if i == bad:
            row = [i, "two\nlines", i / 4, *fields] if fields else [i, "two\nlines"]
        writer.writerow(row)
    text = out.getvalue()
    (base / "data.csv").write_text(text)
    assert len(text) > (3 << 20) if rows > 3000 else len(text) < (100 << 10)  # past the sample, or within
    line = text.split("\n").index(f'{bad},"two') + 1
    assert line == 2 + bad + -(-bad // 3)  # row 0 on line 2, plus the newline inside every third row before
    if range_bytes:
        small_ranges(range_bytes)
    with pytest.raises(ExecutorError) as info:
        _run(CsvExampleGen(input_base=str(base)), str(tmp_path / "out"))
    shown = f"'{bad},\"two\\nlines\",{bad / 4},extra'" if fields else f"'{bad},\"two\\nlines\"'"
    assert str(info.value) == (
        f"csv_example_gen: CSV file {base / 'data.csv'}: line {line} has {4 if fields else 2} fields but the "
        f"header has 3: {shown}. Every row needs one field per header column (quote fields that hold the "
        f"delimiter ','); fix or remove the row."
    )
    assert os.listdir(tmp_path / "out") == []


def test_ranges_shorter_than_a_line_and_no_final_newline(small_ranges, tmp_path):
    base = tmp_path / "data"
    base.mkdir()
    lines = ["a,b,c"] + [f"{i},{'x' * (i % 50)},{i / 3}" for i in range(400)]
    (base / "data.csv").write_bytes("\r\n".join(lines).encode())  # CRLF, none after the last row
    small_ranges(7)
    examples = _run(CsvExampleGen(input_base=str(base)), str(tmp_path / "out"))
    both = pa.concat_tables([_table(examples, s) for s in examples.splits])
    assert both.num_rows == 400
    assert _rows(both) == _rows(_reference(str(base / "data.csv")))


def test_a_later_range_corrects_the_guessed_type(small_ranges, tmp_path):
    """A value that does not fit the sampled type, met by a worker reading a
    later range: the types are learned from every value and the rows written again."""
    base = tmp_path / "data"
    base.mkdir()
    lines = ["n,label"] + [f"{i},{i % 7}" for i in range(300_000)] + ["1.5,seven"]
    (base / "data.csv").write_text("\n".join(lines) + "\n")
    small_ranges(256 << 10)
    examples = _run(CsvExampleGen(input_base=str(base)), str(tmp_path / "out"))
    both = pa.concat_tables([_table(examples, s) for s in examples.splits])
    assert both.num_rows == 300_001
    assert both.schema.field("n").type == pa.float64() and both.schema.field("label").type == pa.string()
    assert sorted(os.listdir(examples.uri)) == ["Split-eval", "Split-train"]


def test_a_bad_row_found_by_a_worker(small_ranges, tmp_path):
    """Past the first block the driver samples: a worker finds the row, and the
    error names the file and its line, with nothing left in the output."""
    base = tmp_path / "data"
    base.mkdir()
    lines = ["a,b,c"] + [f"{i},{i % 7},{i / 3}" for i in range(200_000)]
    lines[190_001] = "1,2"
    (base / "data.csv").write_text("\n".join(lines) + "\n")
    small_ranges(512 << 10)
    out = tmp_path / "out"
    with pytest.raises(ExecutorError) as info:
        _run(CsvExampleGen(input_base=str(base)), str(out))
    message = str(info.value)
    assert message.startswith("csv_example_gen: CSV file ") and str(base / "data.csv") in message
    assert "line 190002 has 2 fields but the header has 3: '1,2'" in message
    assert os.listdir(out) == []


def test_import_parquet_reads_row_groups_on_workers(monkeypatch, tmp_path):
    """A Parquet file of many row groups, read in parts of a few row groups
    each: the rows and their splits are those of the same data as CSV."""
    from conveyor.components.example_gen import parquet_input

    monkeypatch.setattr(parquet_input, "ROWS_PER_PART", 3000)
    base = tmp_path / "data"
    base.mkdir()
    source = _reference(os.path.join(DATA["taxi"], "data.csv"))
    pq.write_table(source, str(base / "data.parquet"), row_group_size=1000)
    imported = _run(ImportExampleGen(input_base=str(base), payload_format="parquet"), str(tmp_path / "out"))
    committed, counts = _committed("taxi")
    assert json.loads(imported.get("row_counts")) == counts
    for split in committed.splits:
        assert _rows(_table(imported, split)) == _rows(_table(committed, split))


# ---------------------------------------------------------------------------
# Beam's portable runner: the job service and workers in other processes.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    with PortableServices(str(tmp_path_factory.mktemp("example_gen_portable"))) as running:
        yield running
    assert running.leftover_processes() == []


def test_example_gen_on_the_portable_runner(services, small_ranges, tmp_path):
    small_ranges(200_000)  # the taxi CSV in ten ranges, spread over the workers
    jobs_before = set(services.jobs())
    csv_examples = _run(CsvExampleGen(input_base=DATA["taxi"]), str(tmp_path / "csv"), services.beam_args())
    committed, counts = _committed("taxi")
    assert json.loads(csv_examples.get("row_counts")) == counts
    for split in committed.splits:
        assert _rows(_table(csv_examples, split)) == _rows(_table(committed, split))

    # ImportExampleGen of TFRecord: one job learns the features' types, one writes.
    imported = _run(ImportExampleGen(input_base=TFRECORD_DIR), str(tmp_path / "tfrecord"), services.beam_args())
    local = _run(ImportExampleGen(input_base=TFRECORD_DIR), str(tmp_path / "tfrecord_local"))
    assert imported.get("row_counts") == local.get("row_counts")
    for split in local.splits:
        assert _rows(_table(imported, split)) == _rows(_table(local, split))
    new_jobs = {j: s for j, s in services.jobs().items() if j not in jobs_before}
    assert list(new_jobs.values()) == ["DONE"] * 3

    # Bad input a worker process finds (past the block the driver samples)
    # reaches the user as on the DirectRunner.
    base = tmp_path / "bad"
    base.mkdir()
    with open(os.path.join(DATA["taxi"], "data.csv")) as f:
        header, *rows = f.read().splitlines()
    lines = [header] + rows * 2
    lines[28_000] = "1,2,3"
    (base / "data.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "bad_out"
    with pytest.raises(ExecutorError, match=r"line 28001 has 3 fields but the header has 18"):
        _run(CsvExampleGen(input_base=str(base)), str(out), services.beam_args())
    assert os.listdir(out) == []


# ---------------------------------------------------------------------------
# S3 input and output (a real S3 server on loopback).
# ---------------------------------------------------------------------------


def test_csv_from_s3_to_s3(s3_env, small_ranges, tmp_path):
    bucket = s3_env.bucket("example-gen-beam")
    s3_env.upload_dir(DATA["taxi"], f"{bucket}/input/taxi")
    small_ranges(500_000)
    uri = f"{bucket}/output/examples/1"
    gen = CsvExampleGen(input_base=f"{bucket}/input/taxi")
    examples = _run(gen, uri, fs.beam_args([uri]))
    committed, counts = _committed("taxi")
    assert json.loads(examples.get("row_counts")) == counts
    assert examples.get("input_files") == json.dumps({"single_split": [f"{bucket}/input/taxi/data.csv"]})
    for split in committed.splits:
        assert _rows(_table(examples, split)) == _rows(_table(committed, split))
    # Only the data files: no staging, work or Beam temporary objects (an
    # empty "directory" marker pyarrow leaves when it empties a prefix aside).
    keys = [k for k in s3_env.keys("example-gen-beam", "output/") if not k.endswith("/")]
    assert sorted(keys) == [
        "output/examples/1/Split-eval/data-00000-of-00001.parquet",
        "output/examples/1/Split-train/data-00000-of-00001.parquet",
    ]
    fingerprint = gen.external_fingerprints()["single_split"]
    s3_env.client().put_object(Bucket="example-gen-beam", Key="input/taxi/data.csv", Body=b"a,b\n1,2\n")
    assert gen.external_fingerprints()["single_split"] != fingerprint

    s3_env.client().put_object(Bucket="example-gen-beam", Key="input/taxi/empty.csv", Body=b"a,b\n")
    with pytest.raises(ExecutorError, match="empty.csv has a header but no rows"):
        _run(gen, f"{bucket}/output/examples/2", fs.beam_args([uri]))
    assert [k for k in s3_env.keys("example-gen-beam", "output/examples/2") if not k.endswith("/")] == []


def test_arrow_coders_round_trip_and_estimate_without_encoding():
    from conveyor.components import arrow_coders

    table = pa.table({
        "n": pa.array([1, None, 3], pa.int64()),
        "s": pa.array(["a", None, "ccc"]),
        "l": pa.array([[1.5], [], None], pa.large_list(pa.float32())),
    })
    batch = table.to_batches()[0]
    for coder, value in ((arrow_coders.ArrowTableCoder(), table), (arrow_coders.ArrowRecordBatchCoder(), batch)):
        decoded = coder.decode(coder.encode(value))
        assert type(decoded) is type(value) and decoded.equals(value) and decoded.schema == value.schema
        assert coder.estimate_size(value) == value.nbytes
    arrow_coders.register()
    import apache_beam as beam

    assert isinstance(beam.coders.registry.get_coder(pa.RecordBatch), arrow_coders.ArrowRecordBatchCoder)
    assert isinstance(beam.coders.registry.get_coder(pa.Table), arrow_coders.ArrowTableCoder)
    # TFDV puts its pickling coder there when imported; registering again restores ours.
    beam.coders.registry.register_coder(pa.RecordBatch, beam.coders.PickleCoder)
    arrow_coders.register()
    assert isinstance(beam.coders.registry.get_coder(pa.RecordBatch), arrow_coders.ArrowRecordBatchCoder)
