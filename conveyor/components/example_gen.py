"""ExampleGen: the components that bring data into a pipeline.

`CsvExampleGen` reads CSV files, `ImportExampleGen` reads TFRecord files of
tf.Example (gzipped or not) or Parquet files. Both write one `Examples`
artifact in Conveyor's Parquet layout (see `conveyor.components.examples_io`):
`Split-<name>/data-NNNNN-of-NNNNN.parquet`, one flat column per feature
(int64, double or string; a missing value is a null).

Which files, and how they become splits, is configured as in TFX, with plain
dataclasses instead of the example_gen protos:

    CsvExampleGen(
        input_base="data/",
        input_config=Input(splits=[InputSplit(name="single_split", pattern="span-{SPAN}/*.csv")]),
        output_config=Output(split_config=SplitConfig(splits=[
            SplitBucket(name="train", hash_buckets=2), SplitBucket(name="eval", hash_buckets=1)])),
    )

Split patterns are globs relative to `input_base`. `{SPAN}` and `{VERSION}`
(optionally with a digit count, `{SPAN:2}`) match digits; the latest span,
and the latest version within it, is read and recorded on the output. Several
input splits pass through as they are; one input split is divided by the
output hash buckets, by a hash of each whole row (or of one feature,
`SplitConfig.partition_feature_name`), so the same row always lands in the
same split. The default is train:eval = 2:1.

The executors use pyarrow directly (no Beam): they stream the input in
blocks, so memory does not grow with the data, and decoding is what costs.
Every path (input_base, the input files, the output) goes through
`conveyor.fs`, so input and output may be local, `s3://` or `gs://`.

Caching: the input fingerprint that decides whether ExampleGen re-runs is
built from what the filesystem reports about each input file, without
reading it: its path relative to input_base, size, modification time (ns)
and, on S3 and GCS, the object's checksum (ETag) or generation. So new,
removed, renamed or rewritten files re-run ExampleGen; but a local file
rewritten in place with the same size and the same modification time (e.g.
restored with `os.utime` or `touch -d`) is not noticed and the cached output
is reused: touch the file (a new modification time) or run with `--no-cache`.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from conveyor import fs
from conveyor.artifacts import Artifact, Examples
from conveyor.components import examples_io
from conveyor.components.base import ExecutionContext
from conveyor.errors import PipelineDefinitionError, closest
from conveyor.pipeline.dsl import Component

__all__ = [
    "InputSplit",
    "Input",
    "InputConfig",
    "SplitBucket",
    "SplitConfig",
    "Output",
    "OutputConfig",
    "CsvExampleGen",
    "CsvExampleGenParams",
    "ImportExampleGen",
    "ImportExampleGenParams",
    "ResolvedInput",
    "resolve_input",
    "run_csv",
    "run_import",
]

# ---------------------------------------------------------------------------
# Configuration (TFX's example_gen_pb2.Input / Output, as plain dataclasses).
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InputSplit:
    """One input split: files matching the glob `pattern` (relative to
    `input_base`; may hold `{SPAN}` / `{VERSION}`, e.g. `span-{SPAN}/*.csv`)."""

    name: str
    pattern: str


@dataclasses.dataclass(frozen=True)
class Input:
    """Which files to read, as one or more named splits (TFX's `Input`).
    The default reads every file directly under `input_base` as one split."""

    splits: Sequence[InputSplit] = (InputSplit(name="single_split", pattern="*"),)


@dataclasses.dataclass(frozen=True)
class SplitBucket:
    """One output split and its share of the hash buckets: with buckets
    train=2, eval=1, two thirds of the rows go to train."""

    name: str
    hash_buckets: int


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """How one input split is divided into output splits. With
    `partition_feature_name`, rows are assigned by a hash of that feature
    alone (rows sharing a value share a split) instead of the whole row."""

    splits: Sequence[SplitBucket] = ()
    partition_feature_name: str = ""


@dataclasses.dataclass(frozen=True)
class Output:
    """The output splits (TFX's `Output`). `split_config=None` means
    train:eval = 2:1 when there is one input split; with several input
    splits it must stay None, as the input splits are the output splits."""

    split_config: SplitConfig | None = None


# Names that do not clash with `conveyor.pipeline.dsl.Input`.
InputConfig = Input
OutputConfig = Output

_DEFAULT_SPLITS = (SplitBucket("train", 2), SplitBucket("eval", 1))
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_-]+")
_SPEC = re.compile(r"\{(SPAN|VERSION)(?::(\d+))?\}")


def _check_configs(where: str, input_config: Input, output_config: Output) -> None:
    """Raise PipelineDefinitionError for configs TFX would also reject."""
    splits = list(input_config.splits)
    if not splits:
        raise PipelineDefinitionError(f"{where}: input_config has no splits; give at least one InputSplit.")
    seen: set[str] = set()
    has_span: list[bool] = []
    for s in splits:
        if not isinstance(s, InputSplit):
            raise PipelineDefinitionError(
                f"{where}: input_config.splits must hold InputSplit(name=..., pattern=...), got {s!r}."
            )
        if not _SPLIT_NAME.fullmatch(s.name or "") or s.name in seen:
            raise PipelineDefinitionError(
                f"{where}: input split name {s.name!r} must be unique letters, digits, '_' or '-'."
            )
        seen.add(s.name)
        if not s.pattern or os.path.isabs(s.pattern):
            raise PipelineDefinitionError(
                f"{where}: input split {s.name!r} pattern {s.pattern!r} must be a non-empty glob "
                f"relative to input_base, e.g. '*.csv' or 'span-{{SPAN}}/*'."
            )
        kinds = [m.group(1) for m in _SPEC.finditer(s.pattern)]
        for kind in ("SPAN", "VERSION"):
            if kinds.count(kind) > 1:
                raise PipelineDefinitionError(
                    f"{where}: input split {s.name!r} pattern {s.pattern!r} has {{{kind}}} more than once."
                )
        if "VERSION" in kinds and "SPAN" not in kinds:
            raise PipelineDefinitionError(
                f"{where}: input split {s.name!r} pattern {s.pattern!r} has {{VERSION}} without "
                f"{{SPAN}}; versions number the files of a span, so add {{SPAN}}."
            )
        leftover = _SPEC.sub("", s.pattern)
        if re.search(r"\{[A-Z]+(:\d+)?\}", leftover):
            raise PipelineDefinitionError(
                f"{where}: input split {s.name!r} pattern {s.pattern!r} holds an unknown spec; "
                f"only {{SPAN}}, {{SPAN:width}}, {{VERSION}} and {{VERSION:width}} are supported."
            )
        has_span.append("SPAN" in kinds)
    if any(has_span) and not all(has_span):
        raise PipelineDefinitionError(
            f"{where}: either every input split pattern has {{SPAN}} or none does."
        )
    sc = output_config.split_config
    if sc is None:
        return
    if not isinstance(sc, SplitConfig):
        raise PipelineDefinitionError(
            f"{where}: output_config.split_config must be a SplitConfig, got {sc!r}."
        )
    if len(splits) > 1:
        raise PipelineDefinitionError(
            f"{where}: input_config has {len(splits)} splits, so they are the output splits; "
            f"leave output_config.split_config unset (it divides a single input split)."
        )
    buckets = list(sc.splits)
    if not buckets:
        raise PipelineDefinitionError(
            f"{where}: output_config.split_config has no splits; give SplitBucket(name=..., "
            f"hash_buckets=...) items or leave split_config=None for train:eval = 2:1."
        )
    seen = set()
    for b in buckets:
        if not isinstance(b, SplitBucket):
            raise PipelineDefinitionError(
                f"{where}: split_config.splits must hold SplitBucket(name=..., hash_buckets=...), got {b!r}."
            )
        if not _SPLIT_NAME.fullmatch(b.name or "") or b.name in seen:
            raise PipelineDefinitionError(
                f"{where}: output split name {b.name!r} must be unique letters, digits, '_' or '-'."
            )
        seen.add(b.name)
        if not isinstance(b.hash_buckets, int) or isinstance(b.hash_buckets, bool) or b.hash_buckets <= 0:
            raise PipelineDefinitionError(
                f"{where}: output split {b.name!r} hash_buckets must be a positive int, "
                f"got {b.hash_buckets!r}."
            )


# ---------------------------------------------------------------------------
# Components
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CsvExampleGenParams:
    input_base: str
    input_config: Input = Input()
    output_config: Output = Output()
    # "parquet" (fastest to decode) or "tfrecords_gzip" (tf.Example, for
    # tools that read TFX's format).
    output_file_format: str = "parquet"


@dataclasses.dataclass(frozen=True)
class ImportExampleGenParams:
    input_base: str
    payload_format: str = "tfrecord"  # "tfrecord" (tf.Example, gzipped or not) or "parquet"
    input_config: Input = Input()
    output_config: Output = Output()
    output_file_format: str = "parquet"  # or "tfrecords_gzip", as CsvExampleGenParams


_PAYLOAD_FORMATS = ("tfrecord", "parquet")


class _ExampleGen(Component):
    OUTPUTS = {"examples": Examples}

    def check(self) -> None:
        _check_configs(self._where(), self.params.input_config, self.params.output_config)
        if not self.params.input_base:
            raise PipelineDefinitionError(f"{self._where()}: input_base must be a directory path.")
        formats = (examples_io.PARQUET, examples_io.TFRECORDS_GZIP)
        if self.params.output_file_format not in formats:
            raise PipelineDefinitionError(
                f"{self._where()}: output_file_format {self.params.output_file_format!r} is not one of "
                f"{list(formats)}.{closest(self.params.output_file_format, formats)}"
            )

    def external_fingerprints(self) -> dict[str, str]:
        """Per input split, a sha256 over what the filesystem reports of the
        files it would read now (path relative to input_base, size,
        modification time, object checksum where the store gives one; see the
        module docstring), so new or changed data (or a new span) re-runs
        ExampleGen instead of reusing old output. No file is read."""
        try:
            resolved = resolve_input(self.params.input_base, self.params.input_config)
        except _InputProblem:
            return {}  # The executor reports it, with what to do.
        base = fs.abspath(self.params.input_base)
        return {split: _stat_digest(base, paths) for split, paths in resolved.files.items()}


class CsvExampleGen(_ExampleGen):
    """Reads CSV files (a header line, then one row a line) under `input_base`
    into Examples. Column types are inferred over the whole input as in TFX:
    int64 if every non-empty value is an integer, else double if every one is
    a number, else string; an empty field is a null."""

    Params = CsvExampleGenParams
    EXECUTOR = "conveyor.components.example_gen:run_csv"


class ImportExampleGen(_ExampleGen):
    """Imports existing examples under `input_base`: TFRecord files of
    tf.Example (`payload_format="tfrecord"`, gzipped or not) or Parquet files
    (`payload_format="parquet"`). A feature with at most one value per row
    becomes a flat column; one with more stays a list column."""

    Params = ImportExampleGenParams
    EXECUTOR = "conveyor.components.example_gen:run_import"

    def check(self) -> None:
        super().check()
        if self.params.payload_format not in _PAYLOAD_FORMATS:
            raise PipelineDefinitionError(
                f"{self._where()}: payload_format {self.params.payload_format!r} is not one of "
                f"{list(_PAYLOAD_FORMATS)}."
            )


# ---------------------------------------------------------------------------
# Input resolution: split patterns, {SPAN} and {VERSION}.
# ---------------------------------------------------------------------------


class _InputProblem(ValueError):
    """Bad input found while resolving or reading; the executor raises it as
    an ExecutorError naming the component."""


@dataclasses.dataclass
class ResolvedInput:
    """The files each input split reads, and the span and version chosen."""

    span: int
    version: int | None
    files: dict[str, list[str]]  # input split name -> sorted absolute paths


def _glob_to_regex(pattern: str) -> str:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = pattern.find("]", i + 2)
            if j == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:j]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _pattern_parts(pattern: str) -> tuple[str, re.Pattern[str]]:
    """The glob that lists candidate files and the regex that reads their
    span and version."""
    glob_parts, regex_parts = [], []
    pos = 0
    for m in _SPEC.finditer(pattern):
        literal = pattern[pos:m.start()]
        glob_parts.append(literal)
        regex_parts.append(_glob_to_regex(literal))
        width = m.group(2)
        glob_parts.append("?" * int(width) if width else "*")
        digits = rf"\d{{{int(width)}}}" if width else r"\d+"
        regex_parts.append(f"(?P<{m.group(1).lower()}>{digits})")
        pos = m.end()
    glob_parts.append(pattern[pos:])
    regex_parts.append(_glob_to_regex(pattern[pos:]))
    return "".join(glob_parts), re.compile("".join(regex_parts) + r"\Z")


def resolve_input(input_base: str, input_config: Input) -> ResolvedInput:
    """The files each input split reads now: with {SPAN}/{VERSION} in the
    patterns, those of the latest span and its latest version, as TFX picks
    them. Raises ValueError (saying what to do) when input_base is not a
    directory, a split matches no file, or the splits' latest spans differ."""
    base = fs.abspath(input_base)
    if not fs.isdir(base):
        raise _InputProblem(
            f"input_base {input_base!r} ({base}) is not a directory. Point input_base at the directory "
            f"that holds the data files."
        )
    found: dict[str, dict[tuple[int, int], list[str]]] = {}
    uses_span = uses_version = False
    remote_files: list[str] | None = None
    for split in input_config.splits:
        glob_pattern, regex = _pattern_parts(split.pattern)
        uses_span = uses_span or "{SPAN" in split.pattern
        uses_version = uses_version or "{VERSION" in split.pattern
        by_key: dict[tuple[int, int], list[str]] = {}
        if fs.is_remote(base):
            # One listing of the prefix serves every split; object stores
            # list files only. Hidden names are skipped, as a local glob does.
            if remote_files is None:
                remote_files = [
                    rel for rel in fs.walk_files(base) if not any(p.startswith(".") for p in rel.split("/"))
                ]
            candidates = [(fs.join(base, rel), rel) for rel in remote_files]
        else:
            candidates = [
                (path, fs.relpath(path, base).replace(os.sep, "/"))
                for path in fs.glob(fs.join(glob.escape(base), glob_pattern)) if fs.isfile(path)
            ]
        for path, rel in candidates:
            m = regex.match(rel)
            if not m:
                continue
            groups = m.groupdict()
            key = (int(groups.get("span") or 0), int(groups.get("version") or 0))
            by_key.setdefault(key, []).append(path)
        if not by_key:
            names = fs.listdir(base)
            raise _InputProblem(
                f"input split {split.name!r}: no file matches pattern {split.pattern!r} under {base} "
                f"(it holds {names[:10] or 'nothing'}{' ...' if len(names) > 10 else ''}). "
                f"Fix input_config's pattern or put the data files there."
            )
        found[split.name] = by_key
    latest = {name: max(keys) for name, keys in found.items()}
    if len(set(latest.values())) > 1:
        desc = ", ".join(f"{n!r}: span {s} version {v}" for n, (s, v) in latest.items())
        raise _InputProblem(
            f"the input splits' latest span/version differ ({desc}); every split must have files for "
            f"the same latest span and version. Add the missing files or fix the patterns."
        )
    span, version = next(iter(latest.values()))
    files = {name: sorted(by_key[(span, version)]) for name, by_key in found.items()}
    return ResolvedInput(
        span=span if uses_span else 0, version=version if uses_version else None, files=files
    )


def _stat_digest(base: str, paths: list[str]) -> str:
    """A sha256 over what the filesystem reports of each file (relative
    path, size, mtime in ns, checksum where given), never its bytes."""
    import hashlib

    h = hashlib.sha256()
    for st in fs.stat_many(paths):
        rel = fs.relpath(st.path, base).replace(os.sep, "/")
        h.update(f"{rel}\0{st.size}\0{st.mtime_ns}\0{st.checksum}\n".encode())
    return h.hexdigest()


def _fingerprint(files: dict[str, list[str]]) -> str:
    """TFX's input fingerprint: per split, file count, bytes and checksums of
    the modification times."""
    lines = []
    for name, paths in files.items():
        total = xor = summed = 0
        for st in fs.stat_many(paths):
            total += st.size
            mtime = st.mtime_ns // 1_000_000_000
            xor ^= mtime
            summed += mtime
        lines.append(
            f"split:{name},num_files:{len(paths)},total_bytes:{total},"
            f"xor_checksum:{xor},sum_checksum:{summed}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Hash partitioning: deterministic, vectorised over Arrow batches.
# ---------------------------------------------------------------------------

_NULL_HASH = 0x5BD1E9955BD1E995
_MULT = 0x100000001B3


def _mix(x: Any) -> Any:
    """splitmix64's finaliser over a uint64 array."""
    import numpy as np

    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash_binary_values(arr: Any) -> Any:
    """A uint64 hash of each (non-null) string of a string/binary array: a
    polynomial over its bytes, mixed with its length."""
    import numpy as np
    import pyarrow as pa

    if pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type):
        offset_type = np.int64
    else:
        offset_type = np.int32
    n = len(arr)
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], offset_type)[arr.offset:arr.offset + n + 1].astype(np.int64)
    data = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    start, end = int(offsets[0]), int(offsets[-1])
    lengths = np.diff(offsets)
    pos = np.arange(end - start, dtype=np.int64) - np.repeat(offsets[:-1] - start, lengths)
    longest = int(lengths.max(initial=0))
    powers = np.ones(longest + 1, np.uint64)
    if longest:
        powers[1:] = np.cumprod(np.full(longest, _MULT, np.uint64))  # wraps mod 2**64 on purpose
    terms = (data[start:end].astype(np.uint64) + np.uint64(1)) * powers[pos]
    sums = np.concatenate([np.zeros(1, np.uint64), np.cumsum(terms, dtype=np.uint64)])
    h = sums[offsets[1:] - start] - sums[offsets[:-1] - start]
    return _mix(h + lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))


def _hash_column(arr: Any) -> Any:
    """A uint64 hash of each value of a flat or list column; equal values
    hash equal across batches and runs."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    t = arr.type
    if pa.types.is_null(t):
        return np.full(len(arr), _NULL_HASH, np.uint64)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        # Hash the elements, then fold each row's hashes with their positions.
        flat = arr.flatten()
        inner = _hash_column(flat)
        lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy().astype(np.int64)
        row_of = np.repeat(np.arange(len(arr)), lengths)
        pos = np.arange(len(flat), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        h = np.zeros(len(arr), np.uint64)
        np.add.at(h, row_of, _mix(inner + pos.astype(np.uint64)))
        h = _mix(h + lengths.astype(np.uint64))
    elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) \
            or pa.types.is_large_binary(t):
        # Strings repeat a lot (categories): hash each distinct one once.
        encoded = pc.dictionary_encode(arr)
        # A trailing entry stands for null (the dictionary may be empty).
        unique = np.append(_hash_binary_values(encoded.dictionary), np.uint64(_NULL_HASH))
        h = unique[encoded.indices.fill_null(len(unique) - 1).to_numpy(zero_copy_only=False)]
    elif pa.types.is_floating(t):
        values = arr if t == pa.float64() else arr.cast(pa.float64())
        if values.null_count:
            values = values.fill_null(0.0)
        h = values.to_numpy().view(np.uint64) + np.uint64(0x2545F4914F6CDD1D)  # 0.0 != integer 0
    else:
        values = arr if t == pa.int64() else arr.cast(pa.int64())
        if values.null_count:
            values = values.fill_null(0)
        h = values.to_numpy().view(np.uint64)
    if arr.null_count:
        h = np.where(arr.is_valid().to_numpy(zero_copy_only=False), h, np.uint64(_NULL_HASH))
    return h


def _row_hashes(batch: Any, feature: str = "") -> Any:
    """A uint64 hash of each row (all its values in column order), or of
    one feature's value."""
    import numpy as np

    if feature:
        return _mix(_hash_column(batch.column(batch.schema.get_field_index(feature))))
    h = np.zeros(batch.num_rows, np.uint64)
    with np.errstate(over="ignore"):
        for column in batch.columns:
            h = h * np.uint64(_MULT) + _hash_column(column)
    return _mix(h)


# ---------------------------------------------------------------------------
# Writing: one Parquet writer per output split, files renamed at the end.
# ---------------------------------------------------------------------------

_ROWS_PER_FILE = 2_000_000
_ROWS_PER_GROUP = 100_000


class _SplitWriter:
    """Writes the batches of one output split to `directory`, starting a new
    file every _ROWS_PER_FILE rows; close() gives the files their final
    `data-NNNNN-of-NNNNN.parquet` names."""

    def __init__(self, directory: str, schema: Any) -> None:
        fs.makedirs(directory)
        self.directory = directory
        self.schema = schema
        self.rows = 0
        self._files: list[str] = []
        self._writer: Any = None
        self._in_file = 0
        self._pending: list[Any] = []
        self._pending_rows = 0

    def write(self, batch: Any) -> None:
        if batch.num_rows == 0:
            return
        # Small batches are gathered into row groups of _ROWS_PER_GROUP rows.
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        self.rows += batch.num_rows
        if self._pending_rows >= _ROWS_PER_GROUP:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if not self._pending:
            return
        if self._writer is None or self._in_file >= _ROWS_PER_FILE:
            self._close_file()
            path = fs.join(self.directory, f"part-{len(self._files):05d}.parquet")
            self._files.append(path)
            self._writer = _parquet_writer(path, self.schema)
        self._writer.write_table(pa.Table.from_batches(self._pending, self.schema), row_group_size=1 << 30)
        self._in_file += self._pending_rows
        self._pending, self._pending_rows = [], 0

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._in_file = 0

    def close(self) -> None:
        self._flush()
        self._close_file()
        if not self._files:  # An empty split still gets a file, so its schema is known.
            path = fs.join(self.directory, "part-00000.parquet")
            _parquet_writer(path, self.schema).close()
            self._files.append(path)
        n = len(self._files)
        for i, path in enumerate(self._files):
            fs.rename(path, fs.join(self.directory, f"data-{i:05d}-of-{n:05d}.parquet"))


def _parquet_writer(path: str, schema: Any) -> Any:
    """A ParquetWriter on Arrow's own filesystem for `path` (local or remote)."""
    import pyarrow.parquet as pq

    filesystem, inner = fs.arrow_filesystem(path)
    return pq.ParquetWriter(inner, schema, filesystem=filesystem)


def _arrow_input(path: str, *, stream: bool = False) -> Any:
    """An Arrow file (random access) or stream (sequential, read ahead) of an
    input file, local or remote."""
    filesystem, inner = fs.arrow_filesystem(path)
    return filesystem.open_input_stream(inner) if stream else filesystem.open_input_file(inner)


class _Prefetch:
    """Iterates `batches` on a thread, a few ahead, so decoding (which
    releases the GIL) overlaps hashing and writing on another core."""

    _DONE = object()

    def __init__(self, batches: Iterator[Any], depth: int = 3) -> None:
        import queue
        import threading

        self._queue: Any = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(batches,), daemon=True)
        self._thread.start()

    def _fill(self, batches: Iterator[Any]) -> None:
        import queue

        try:
            for item in batches:
                while not self._stop.is_set():
                    try:
                        self._queue.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            item, error = self._DONE, None
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            item, error = self._DONE, e
        while not self._stop.is_set():
            try:
                self._queue.put((item, error), timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[Any]:
        try:
            while True:
                item, error = self._queue.get()
                if error is not None:
                    raise error
                if item is self._DONE:
                    return
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stop the thread (also when the consumer gives up early)."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> _Prefetch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _partition(
    sources: dict[str, tuple[Any, Iterator[Any]]],
    output_config: Output,
    staging: str,
) -> dict[str, int]:
    """Write each input split's batches to its output splits under
    `staging`; return the rows of each output split."""
    import numpy as np
    import pyarrow as pa

    counts: dict[str, int] = {}
    if len(sources) > 1:
        for name, (schema, batches) in sources.items():
            writer = _SplitWriter(fs.join(staging, f"Split-{name}"), schema)
            with _Prefetch(batches) as prefetched:
                for batch in prefetched:
                    writer.write(batch)
            writer.close()
            counts[name] = writer.rows
        return counts
    (schema, batches), = sources.values()
    sc = output_config.split_config or SplitConfig(splits=_DEFAULT_SPLITS)
    names = [b.name for b in sc.splits]
    bounds = np.cumsum([b.hash_buckets for b in sc.splits]).astype(np.uint64)
    total = bounds[-1]
    writers = [_SplitWriter(fs.join(staging, f"Split-{n}"), schema) for n in names]
    with _Prefetch(batches) as prefetched:
        for batch in prefetched:
            hashes = _row_hashes(batch, sc.partition_feature_name)
            which = np.searchsorted(bounds, hashes % total, side="right")
            for i, writer in enumerate(writers):
                writer.write(batch.filter(pa.array(which == i)))
    for writer in writers:
        writer.close()
    return {n: w.rows for n, w in zip(names, writers, strict=True)}


# ---------------------------------------------------------------------------
# The shared executor body.
# ---------------------------------------------------------------------------


def _generate(
    outputs: dict[str, list[Artifact]],
    input_base: str,
    input_config: Input,
    output_config: Output,
    ctx: ExecutionContext,
    read: Any,
    file_format: str = examples_io.PARQUET,
) -> None:
    """Resolve the input, let `read(files_by_split, exact, workdir)` give
    (schema, batches) per input split, partition and write them; publish
    only on success. On a local disk everything is written under a staging
    directory inside the output and renamed into place at the end; on an
    object store (no atomic rename) the splits are written in place and
    removed again on failure; either way bad input found late leaves the
    output empty. `workdir` is local scratch space for `read`. `exact` asks
    for types checked over all the data, after a first attempt raised
    _TypeGuessWrong."""
    out = outputs["examples"][0]
    try:
        resolved = resolve_input(input_base, input_config)
    except _InputProblem as e:
        raise ctx.error(str(e)) from None
    sc = output_config.split_config
    remote = fs.is_remote(out.uri)
    scratch_parent = ctx.tmp_dir if ctx.tmp_dir and not fs.is_remote(ctx.tmp_dir) else None
    if scratch_parent:
        fs.makedirs(scratch_parent)

    def attempt(exact: bool) -> dict[str, int]:
        staging = out.uri if remote else fs.join(out.uri, f".staging-{uuid.uuid4().hex[:12]}")
        fs.makedirs(staging)
        scratch = tempfile.mkdtemp(prefix="example-gen-", dir=scratch_parent)
        written: list[str] = []
        try:
            sources = read(resolved.files, exact, scratch)
            if sc is not None and sc.partition_feature_name and len(sources) == 1:
                (schema, _), = sources.values()
                if sc.partition_feature_name not in schema.names:
                    raise _InputProblem(
                        f"partition_feature_name {sc.partition_feature_name!r} is not a column of the "
                        f"input (columns: {schema.names}). Name one of them."
                    )
            names = list(sources) if len(sources) > 1 else [
                b.name for b in (sc or SplitConfig(splits=_DEFAULT_SPLITS)).splits
            ]
            written = [fs.join(staging, f"Split-{name}") for name in names]
            counts = _partition(sources, output_config, staging)
            if file_format == examples_io.TFRECORDS_GZIP:
                for name in counts:
                    examples_io.parquet_to_tfrecords(fs.join(staging, f"Split-{name}"))
            if not remote:
                for name in counts:
                    fs.rename(fs.join(staging, f"Split-{name}"), fs.join(out.uri, f"Split-{name}"))
            written = []
            return counts
        finally:
            if remote:
                for path in written:  # What a failed attempt left in place.
                    fs.rmtree(path)
            else:
                fs.rmtree(staging)
            shutil.rmtree(scratch, ignore_errors=True)

    try:
        try:
            counts = attempt(exact=False)
        except _TypeGuessWrong:
            # A value later in the data did not fit the type its sample suggested.
            counts = attempt(exact=True)
    except _InputProblem as e:
        raise ctx.error(str(e)) from None
    out.splits = list(counts)
    out.set("span", resolved.span)
    out.set("version", resolved.version or 0)
    out.custom_properties["file_format"] = file_format
    out.custom_properties["input_base"] = fs.abspath(input_base)
    out.custom_properties["input_fingerprint"] = _fingerprint(resolved.files)
    out.custom_properties["input_files"] = json.dumps(
        {name: paths for name, paths in resolved.files.items()}
    )
    out.custom_properties["row_counts"] = json.dumps(counts)


def run_csv(
    inputs: dict[str, list[Artifact]],
    outputs: dict[str, list[Artifact]],
    params: CsvExampleGenParams,
    ctx: ExecutionContext,
) -> None:
    """CsvExampleGen's executor."""
    del inputs
    _generate(
        outputs, params.input_base, params.input_config, params.output_config, ctx, _read_csv,
        params.output_file_format,
    )


def run_import(
    inputs: dict[str, list[Artifact]],
    outputs: dict[str, list[Artifact]],
    params: ImportExampleGenParams,
    ctx: ExecutionContext,
) -> None:
    """ImportExampleGen's executor."""
    del inputs
    read = _read_tfrecord if params.payload_format == "tfrecord" else _read_parquet
    _generate(
        outputs, params.input_base, params.input_config, params.output_config, ctx, read, params.output_file_format
    )


# ---------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------

# Larger blocks decode no faster but let pyarrow's read-ahead hold more memory.
_CSV_BLOCK = 2 << 20
# The order types widen in: a column takes the first that holds all its values.
_WIDTH = ("null", "int64", "double", "string")


def _csv_options(column_types: dict[str, Any] | None = None) -> dict[str, Any]:
    import pyarrow.csv as pcsv

    return {
        "read_options": pcsv.ReadOptions(block_size=_CSV_BLOCK),
        # Only an empty field is missing (TFX's rule): "NA" or "null" are values.
        "convert_options": pcsv.ConvertOptions(
            column_types=column_types, null_values=[""], strings_can_be_null=True,
            true_values=[], false_values=[],
        ),
    }


def _find_line(path: str, text: str) -> int | None:
    """The line number of the first line equal to `text` (1 is the header)."""
    text = text.rstrip("\r\n")
    with fs.open(path, "rb") as f:
        for number, line in enumerate(_lines(f), 1):
            if number > 1 and line.rstrip(b"\r\n").decode("utf-8", "replace") == text:
                return number
    return None


def _lines(f: Any) -> Iterator[bytes]:
    """The lines of a binary file object (local or an Arrow stream), read in blocks."""
    rest = b""
    while chunk := f.read(_READ_CHUNK):
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        yield from (line + b"\n" for line in lines)
    if rest:
        yield rest


def _csv_problem(path: str, error: Exception) -> _InputProblem:
    message = str(error)
    m = re.search(r"Expected (\d+) columns, got (\d+): (.*)", message, re.S)
    if m:
        row = m.group(3)
        line = _find_line(path, row)
        where = f"line {line}" if line else "a row"
        shown = row if len(row) <= 200 else row[:200] + "..."
        return _InputProblem(
            f"CSV file {path}: {where} has {m.group(2)} fields but the header has {m.group(1)}: "
            f"{shown!r}. Every row needs one field per header column (quote fields that hold a comma); "
            f"fix or remove the row."
        )
    if "invalid UTF8" in message or "UTF8" in message:
        return _InputProblem(
            f"CSV file {path} is not valid UTF-8 ({message}). Re-encode it as UTF-8."
        )
    return _InputProblem(f"CSV file {path} cannot be read: {message}. Fix the file.")


def _csv_header(path: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    if fs.stat(path).size == 0:
        raise _InputProblem(
            f"CSV file {path} is empty (0 bytes); expected a header line and rows. Remove the file "
            f"or fill it."
        )
    try:
        reader = pcsv.open_csv(_arrow_input(path, stream=True), **_csv_options())
    except pa.ArrowInvalid as e:
        raise _csv_problem(path, e) from None
    names = reader.schema.names
    if len(set(names)) != len(names) or any(not n for n in names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise _InputProblem(
            f"CSV file {path}: header {names} has "
            f"{'duplicate column names ' + str(dupes) if dupes else 'an empty column name'}; "
            f"each column needs a unique name."
        )
    return names


def _narrowest(arrow_type: Any) -> str:
    import pyarrow as pa

    if pa.types.is_null(arrow_type):
        return "null"
    if pa.types.is_integer(arrow_type):
        return "int64"
    if pa.types.is_floating(arrow_type):
        return "double"
    return "string"  # Text pyarrow reads as dates, times or booleans stays text.


def _arrow_type(kind: str) -> Any:
    import pyarrow as pa

    # A column with no value anywhere is written as int64 nulls.
    return {"null": pa.int64(), "int64": pa.int64(), "double": pa.float64(), "string": pa.string()}[kind]


def _sample_kinds(files: list[str], names: list[str]) -> dict[str, str]:
    """Column kinds guessed from the first block of each file."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    kinds = dict.fromkeys(names, "null")
    for path in files:
        try:
            reader = pcsv.open_csv(_arrow_input(path, stream=True), **_csv_options())
        except pa.ArrowInvalid as e:
            raise _csv_problem(path, e) from None
        for field in reader.schema:
            kind = _narrowest(field.type)
            if _WIDTH.index(kind) > _WIDTH.index(kinds[field.name]):
                kinds[field.name] = kind
    return kinds


def _exact_kinds(files: list[str], names: list[str]) -> dict[str, str]:
    """Column kinds over every value of every file: read as text, then the
    narrowest type each column casts to."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    kinds = dict.fromkeys(names, "null")
    as_text = {n: pa.string() for n in names}
    for path in files:
        try:
            for batch in pcsv.open_csv(_arrow_input(path, stream=True), **_csv_options(as_text)):
                for name, column in zip(batch.schema.names, batch.columns, strict=True):
                    kind = kinds[name]
                    if kind == "string" or column.null_count == len(column):
                        continue
                    for candidate in _WIDTH[max(1, _WIDTH.index(kind)):]:
                        if candidate == "string":
                            break
                        try:
                            pc.cast(column, _arrow_type(candidate))
                            break
                        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                            continue
                    kinds[name] = candidate
        except pa.ArrowInvalid as e:
            raise _csv_problem(path, e) from None
    return kinds


class _TypeGuessWrong(Exception):
    """A value did not convert to the type guessed from the sample."""


def _csv_batches(files: list[str], names: list[str], schema: Any, exact: bool) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    types = {f.name: f.type for f in schema}
    for path in files:
        rows = 0
        try:
            reader = pcsv.open_csv(_arrow_input(path, stream=True), **_csv_options(types))
            file_names = reader.schema.names
            for batch in reader:
                if file_names != names:
                    batch = pa.RecordBatch.from_arrays([batch.column(n) for n in names], schema=schema)
                rows += batch.num_rows
                yield batch
        except pa.ArrowInvalid as e:
            if "conversion error" in str(e) and not exact:
                raise _TypeGuessWrong(str(e)) from None
            raise _csv_problem(path, e) from None
        if rows == 0:
            raise _InputProblem(
                f"CSV file {path} has a header but no rows; expected at least one row. Remove the file "
                f"or fill it."
            )


class _CsvSource:
    """The batches of the CSV input splits under one column schema, guessed
    from a sample; if a later value does not fit, the whole input is read
    again as text to get the exact types and writing starts over."""

    def __init__(self, files: dict[str, list[str]]) -> None:
        headers = {path: _csv_header(path) for paths in files.values() for path in paths}
        first_path, names = next(iter(headers.items()))
        for path, header in headers.items():
            if sorted(header) != sorted(names):
                raise _InputProblem(
                    f"CSV file {path} has columns {header} but {first_path} has {names}; every input "
                    f"file must have the same header."
                )
        self.files = files
        self.names = names
        self.all_files = list(headers)

    def schema(self, exact: bool) -> Any:
        import pyarrow as pa

        kinds = (_exact_kinds if exact else _sample_kinds)(self.all_files, self.names)
        return pa.schema([(n, _arrow_type(kinds[n])) for n in self.names])

    def sources(self, exact: bool) -> dict[str, tuple[Any, Iterator[Any]]]:
        schema = self.schema(exact)
        return {
            split: (schema, _csv_batches(paths, self.names, schema, exact))
            for split, paths in self.files.items()
        }


def _read_csv(
    files: dict[str, list[str]], exact: bool, workdir: str
) -> dict[str, tuple[Any, Iterator[Any]]]:
    del workdir
    return _CsvSource(files).sources(exact)


# ---------------------------------------------------------------------------
# Column types shared by the TFRecord and Parquet readers.
# ---------------------------------------------------------------------------


def _unify(feature: str, a: Any, b: Any, where: str) -> Any:
    """The type holding both `a` and `b` (types seen for `feature` in two
    places), or _InputProblem when there is none."""
    import pyarrow as pa

    if a == b or pa.types.is_null(b):
        return a
    if pa.types.is_null(a):
        return b
    a_list = pa.types.is_large_list(a)
    b_list = pa.types.is_large_list(b)
    if a_list or b_list:
        inner = _unify(feature, a.value_type if a_list else a, b.value_type if b_list else b, where)
        return pa.large_list(inner)
    pair = {str(a), str(b)}
    if pair == {"int64", "double"}:
        return pa.float64()
    if pair == {"string", "binary"}:
        return pa.binary()
    raise _InputProblem(
        f"feature {feature!r} is {a} in one place and {b} in {where}; a feature must have one type "
        f"throughout the input. Fix the data so the types agree."
    )


def _conform(batch: Any, schema: Any) -> Any:
    """`batch` with exactly the columns of `schema`, in its order and types;
    columns it lacks are nulls."""
    import pyarrow as pa

    arrays = []
    names = batch.schema.names
    for field in schema:
        if field.name not in names:
            arrays.append(pa.nulls(batch.num_rows, field.type))
            continue
        column = batch.column(names.index(field.name))
        if pa.types.is_null(column.type):
            arrays.append(pa.nulls(batch.num_rows, field.type))
        elif column.type != field.type:
            arrays.append(column.cast(field.type))
        else:
            arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


# ---------------------------------------------------------------------------
# TFRecord of tf.Example
# ---------------------------------------------------------------------------

_RECORDS_PER_BATCH = 8192


def _tfrecord_records(path: str) -> Iterator[bytes]:
    """The records of a TFRecord file, gzipped or not, checking the
    checksums of each."""
    import gzip
    import struct
    import zlib

    with fs.open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    hint = (
        "Expected a TFRecord file of tf.Example (gzipped or not); write it with "
        "tf.io.TFRecordWriter, or set payload_format to match the files."
    )
    header = struct.Struct("<QI")
    footer = struct.Struct("<I")
    index = 0
    try:
        with fs.open(path, "rb") as raw, (gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw) as f:
            # Parse from a large buffer: a few reads per record would cost more than decoding.
            buf, pos, eof = b"", 0, False
            while True:
                if len(buf) - pos < 12 and not eof:
                    chunk = f.read(_READ_CHUNK)
                    eof = not chunk
                    buf, pos = buf[pos:] + chunk, 0
                if pos == len(buf):
                    return
                if len(buf) - pos < 12:
                    raise _InputProblem(f"TFRecord file {path} is truncated in record #{index}. {hint}")
                length, length_crc = header.unpack_from(buf, pos)
                if examples_io.masked_crc(buf[pos:pos + 8]) != length_crc:
                    raise _InputProblem(
                        f"file {path} is not a TFRecord file: record #{index} has a bad header. {hint}"
                    )
                end = pos + 12 + length + 4
                while len(buf) < end and not eof:
                    chunk = f.read(max(_READ_CHUNK, end - len(buf)))
                    eof = not chunk
                    buf, end, pos = buf[pos:] + chunk, end - pos, 0
                if len(buf) < end:
                    raise _InputProblem(f"TFRecord file {path} is truncated in record #{index}. {hint}")
                data = buf[pos + 12:end - 4]
                if examples_io.masked_crc(data) != footer.unpack_from(buf, end - 4)[0]:
                    raise _InputProblem(
                        f"TFRecord file {path}: record #{index} fails its checksum (corrupt file). {hint}"
                    )
                pos = end
                index += 1
                yield data
    except (OSError, EOFError, zlib.error) as e:
        raise _InputProblem(f"file {path} cannot be read as gzip ({e}). {hint}") from None


_READ_CHUNK = 4 << 20


def _tfrecord_decoded(path: str) -> Iterator[Any]:
    """Record batches (list-shaped, tfx_bsl's decoding) of one TFRecord file."""
    from tfx_bsl.coders import example_coder

    decoder = example_coder.ExamplesToRecordBatchDecoder()
    records: list[bytes] = []
    done = 0

    def decode(chunk: list[bytes]) -> Any:
        try:
            return decoder.DecodeBatch(chunk)
        except RuntimeError:
            for i, record in enumerate(chunk):
                try:
                    decoder.DecodeBatch([record])
                except RuntimeError:
                    raise _InputProblem(
                        f"TFRecord file {path}: record #{done + i} is not a serialized tf.Example. "
                        f"ImportExampleGen with payload_format='tfrecord' reads tf.Example records only."
                    ) from None
            raise

    for record in _tfrecord_records(path):
        records.append(record)
        if len(records) == _RECORDS_PER_BATCH:
            yield decode(records)
            done += len(records)
            records = []
    if records:
        yield decode(records)
    elif done == 0:
        raise _InputProblem(
            f"TFRecord file {path} holds no records; expected tf.Example records. Remove the file or fill it."
        )


_KIND_NAMES = {"int64": "int64_list", "float": "float_list", "large_binary": "bytes_list"}


class _FeatureKinds:
    """What the decoded batches show of each feature: its value type, whether
    a row ever has more than one value, whether every bytes value is UTF-8."""

    def __init__(self) -> None:
        import pyarrow as pa

        self.kinds: dict[str, Any] = {}
        self.multi: set[str] = set()
        self.not_utf8: set[str] = set()
        self._null = pa.null()

    def add(self, batch: Any, path: str) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        for field, column in zip(batch.schema, batch.columns, strict=True):
            name = field.name
            value_type = field.type.value_type if pa.types.is_large_list(field.type) else field.type
            previous = self.kinds.get(name, self._null)
            if pa.types.is_null(previous):
                self.kinds[name] = value_type
            elif not pa.types.is_null(value_type) and value_type != previous:
                raise _InputProblem(
                    f"feature {name!r} holds {_KIND_NAMES.get(str(previous), previous)} in an earlier "
                    f"record but {_KIND_NAMES.get(str(value_type), value_type)} in {path}; a feature "
                    f"must have one type throughout the input. Fix the data so the types agree."
                )
            if pa.types.is_null(value_type):
                continue
            if name not in self.multi and (pc.max(pc.list_value_length(column)).as_py() or 0) > 1:
                self.multi.add(name)
            if pa.types.is_large_binary(value_type) and name not in self.not_utf8:
                try:
                    column.flatten().cast(pa.large_string())
                except pa.ArrowInvalid:
                    self.not_utf8.add(name)

    def schema(self) -> Any:
        """A column per feature seen anywhere; flat when no row has more than
        one value; bytes as string when every value is UTF-8."""
        import pyarrow as pa

        fields = []
        for name in sorted(self.kinds):
            kind = self.kinds[name]
            if pa.types.is_large_binary(kind):
                flat = pa.binary() if name in self.not_utf8 else pa.string()
            elif pa.types.is_floating(kind):
                flat = pa.float64()  # float32 widens exactly
            else:
                flat = pa.int64()  # int64, or a feature that never has a value
            fields.append((name, pa.large_list(flat) if name in self.multi else flat))
        return pa.schema(fields)


def _flatten_lists(column: Any, target: Any) -> Any:
    """A list column whose rows hold at most one value as a flat column of
    `target` type; an empty or missing list is a null."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
    valid = lengths > 0
    values = column.flatten()
    if pa.types.is_large_binary(values.type) and pa.types.is_string(target):
        values = values.cast(pa.large_string())
    if valid.all():
        return values.cast(target)
    index = pa.array(np.cumsum(valid) - 1, mask=~valid)
    return values.take(index).cast(target)


def _from_decoded(batch: Any, schema: Any) -> Any:
    """A decoded (list-shaped) batch in the output schema."""
    import pyarrow as pa

    names = batch.schema.names
    arrays = []
    for field in schema:
        column = batch.column(names.index(field.name)) if field.name in names else None
        if column is None or pa.types.is_null(column.type):
            arrays.append(pa.nulls(batch.num_rows, field.type))
        elif pa.types.is_large_list(field.type):
            if pa.types.is_string(field.type.value_type):
                column = column.cast(pa.large_list(pa.large_string()))
            arrays.append(column.cast(field.type))
        else:
            arrays.append(_flatten_lists(column, field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _spilled(paths: list[str], schema: Any) -> Iterator[Any]:
    import pyarrow as pa

    for path in paths:
        with pa.memory_map(path) as source:
            yield _from_decoded(pa.ipc.open_file(source).get_batch(0), schema)
        os.remove(path)


def _read_tfrecord(
    files: dict[str, list[str]], exact: bool, workdir: str
) -> dict[str, tuple[Any, Iterator[Any]]]:
    """Decodes every record once, learning the features' types, and keeps
    the decoded batches on disk (lz4) until the schema is known: decoding
    tf.Example is far slower than reading the spill back."""
    import pyarrow as pa

    del exact  # Every record is decoded before the schema is fixed.
    spill_dir = os.path.join(workdir, "decoded")
    os.makedirs(spill_dir)
    options = pa.ipc.IpcWriteOptions(compression="lz4" if pa.Codec.is_available("lz4") else None)
    kinds = _FeatureKinds()
    spills: dict[str, list[str]] = {}
    count = 0
    for split, paths in files.items():
        spills[split] = []
        for path in paths:
            with _Prefetch(_tfrecord_decoded(path)) as decoded:
                for batch in decoded:
                    kinds.add(batch, path)
                    spill = os.path.join(spill_dir, f"{count:06d}.arrow")
                    count += 1
                    with pa.OSFile(spill, "wb") as sink:
                        with pa.ipc.new_file(sink, batch.schema, options=options) as writer:
                            writer.write_batch(batch)
                    spills[split].append(spill)
    schema = kinds.schema()
    return {split: (schema, _spilled(paths, schema)) for split, paths in spills.items()}


# ---------------------------------------------------------------------------
# Parquet
# ---------------------------------------------------------------------------

_PARQUET_BATCH = 65536


def _parquet_type(feature: str, t: Any, path: str) -> Any:
    """The Conveyor type of a Parquet column type."""
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        return _parquet_type(feature, t.value_type, path)
    if pa.types.is_null(t):
        return pa.null()
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return pa.int64()
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return pa.float64()
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return pa.binary()
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        inner = _parquet_type(feature, t.value_type, path)
        if pa.types.is_large_list(inner):
            raise _InputProblem(
                f"Parquet file {path}: column {feature!r} is a nested list ({t}); expected flat columns "
                f"or lists of numbers or strings. Flatten it before importing."
            )
        return pa.large_list(inner)
    raise _InputProblem(
        f"Parquet file {path}: column {feature!r} has type {t}, which tf.Example cannot hold; expected "
        f"integers, floats, strings, bytes or lists of them. Cast it (e.g. timestamps to int64) first."
    )


def _parquet_schema(files: list[str]) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types: dict[str, Any] = {}
    for path in files:
        try:
            pf = pq.ParquetFile(_arrow_input(path))
        except (pa.ArrowInvalid, OSError) as e:
            raise _InputProblem(
                f"file {path} is not a Parquet file ({e}). Expected Parquet files; set payload_format to "
                f"match the files."
            ) from None
        if pf.metadata.num_rows == 0:
            raise _InputProblem(
                f"Parquet file {path} has no rows; expected at least one. Remove the file or fill it."
            )
        for field in pf.schema_arrow:
            t = _parquet_type(field.name, field.type, path)
            types[field.name] = _unify(field.name, types.get(field.name, pa.null()), t, path)
    return pa.schema([(n, pa.int64() if pa.types.is_null(t) else t) for n, t in types.items()])


def _parquet_batches(files: list[str], schema: Any) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for path in files:
        try:
            for batch in pq.ParquetFile(_arrow_input(path)).iter_batches(batch_size=_PARQUET_BATCH):
                yield _conform(batch, schema)
        except (pa.ArrowInvalid, OSError) as e:
            raise _InputProblem(
                f"Parquet file {path} cannot be read or converted: {e}. Fix the file."
            ) from None


def _read_parquet(
    files: dict[str, list[str]], exact: bool, workdir: str
) -> dict[str, tuple[Any, Iterator[Any]]]:
    del exact, workdir  # Parquet files carry their schema.
    schema = _parquet_schema([p for paths in files.values() for p in paths])
    return {split: (schema, _parquet_batches(paths, schema)) for split, paths in files.items()}
