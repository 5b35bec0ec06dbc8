"""CSV input: the driver's plan (headers, column types guessed from a sample,
byte ranges) and the workers' reading of one range into Arrow batches.

Types are inferred as TFX does, over the whole input: int64 if every
non-empty value is an integer, else double if every one is a number, else
string; an empty field is a null. The guess comes from the first block of
each file; a later value that does not fit makes the workers raise
RetryNeeded("types"), and the executor learns the exact types from every
value (`CsvReader.kinds` of every range) and writes again.

A file is read in byte ranges of RANGE_BYTES, each by any worker. A range
holds the lines that start inside it: from the first line starting at or
after its nominal start (the first range: after the header) to the line
holding its last byte, however far that line runs. A newline inside a
quoted field would cut a row; the quote characters tell (RFC 4180 quoting:
between two record boundaries there is an even number of them). A range
whose lines hold an odd number raises RetryNeeded("resplit") before it is
parsed, as does a range that fails to parse and turns out to begin inside
a quoted field (an odd number of quotes before it); the executor then reads
that file whole, by one worker, with pyarrow's own quoting rules. (Some range
of a file whose ranges cut a quoted field always holds an odd number, so a
run that succeeds read every row as the whole file would have.)
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

from conveyor import fs
from conveyor.components.example_gen.inputs import InputProblem, RetryNeeded, open_on_worker

__all__ = [
    "CsvFile",
    "CsvRange",
    "CsvPlan",
    "CsvReader",
    "plan_csv",
    "csv_problem",
    "delimiter_problem",
    "merge_kinds",
    "arrow_type",
    "RANGE_BYTES",
]

# The sample: the first block of each file (as before, so the same data gets
# the same guessed types).
_CSV_BLOCK = 2 << 20
# Nominal size of a byte range read by one worker (memory per worker is a
# few times this); and of the blocks pyarrow parses it in (in parallel).
RANGE_BYTES = 32 << 20
_PARSE_BLOCK = 8 << 20
# The order types widen in: a column takes the first that holds all its values.
_WIDTH = ("null", "int64", "double", "string")


def _csv_options(
    column_types: dict[str, Any] | None = None,
    *,
    column_names: list[str] | None = None,
    block_size: int = _CSV_BLOCK,
    newlines_in_values: bool = False,
    delimiter: str = ",",
) -> dict[str, Any]:
    import pyarrow.csv as pcsv

    return {
        "read_options": pcsv.ReadOptions(block_size=block_size, column_names=column_names),
        "parse_options": pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=newlines_in_values),
        # Only an empty field is missing (TFX's rule): "NA" or "null" are values.
        "convert_options": pcsv.ConvertOptions(
            column_types=column_types, null_values=[""], strings_can_be_null=True,
            true_values=[], false_values=[],
        ),
    }


# ---------------------------------------------------------------------------
# Error messages
# ---------------------------------------------------------------------------


def _lines(f: Any) -> Iterator[bytes]:
    """The lines of a binary file object, read in blocks."""
    rest = b""
    while chunk := f.read(4 << 20):
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        yield from (line + b"\n" for line in lines)
    if rest:
        yield rest


def _find_line(path: str, text: str, opener: Callable[[str], Any]) -> int | None:
    """The line number where the first row equal to `text` begins (1 is the
    header); a row holding quoted newlines spans several lines."""
    want = [part.rstrip("\r") for part in text.rstrip("\r\n").split("\n")]
    window: collections.deque[str] = collections.deque(maxlen=len(want))
    with opener(path) as f:
        for number, line in enumerate(_lines(f), 1):
            window.append(line.rstrip(b"\r\n").decode("utf-8", "replace"))
            start = number - len(want) + 1
            if start > 1 and list(window) == want:
                return start
    return None


def _driver_open(path: str) -> Any:
    return fs.open(path, "rb")


def csv_problem(
    path: str, error: Exception, opener: Callable[[str], Any] = _driver_open, delimiter: str = ","
) -> InputProblem:
    """The InputProblem for pyarrow's error reading a CSV file (`opener`
    opens the file to find the bad line: conveyor.fs on the driver, Beam's
    FileSystems on a worker)."""
    message = str(error)
    m = re.search(r"Expected (\d+) columns, got (\d+): (.*)", message, re.S)
    if m:
        row = m.group(3)
        line = _find_line(path, row, opener)
        where = f"line {line}" if line else "a row"
        shown = row if len(row) <= 200 else row[:200] + "..."
        return InputProblem(
            f"CSV file {path}: {where} has {m.group(2)} fields but the header has {m.group(1)}: "
            f"{shown!r}. Every row needs one field per header column (quote fields that hold the "
            f"delimiter {delimiter!r}); fix or remove the row."
        )
    if "invalid UTF8" in message or "UTF8" in message:
        return InputProblem(
            f"CSV file {path} is not valid UTF-8 ({message}). Re-encode it as UTF-8."
        )
    return InputProblem(f"CSV file {path} cannot be read: {message}. Fix the file.")


# ---------------------------------------------------------------------------
# Types
# ---------------------------------------------------------------------------


def _narrowest(arrow_type: Any) -> str:
    import pyarrow as pa

    if pa.types.is_null(arrow_type):
        return "null"
    if pa.types.is_integer(arrow_type):
        return "int64"
    if pa.types.is_floating(arrow_type):
        return "double"
    return "string"  # Text pyarrow reads as dates, times or booleans stays text.


def arrow_type(kind: str) -> Any:
    import pyarrow as pa

    # A column with no value anywhere is written as int64 nulls.
    return {"null": pa.int64(), "int64": pa.int64(), "double": pa.float64(), "string": pa.string()}[kind]


def merge_kinds(names: list[str], parts: list[dict[str, str]]) -> dict[str, str]:
    """Column kinds holding every part's: the widest of each column."""
    kinds = dict.fromkeys(names, "null")
    for part in parts:
        for name, kind in part.items():
            if _WIDTH.index(kind) > _WIDTH.index(kinds[name]):
                kinds[name] = kind
    return kinds


def _batch_kinds(batch: Any, kinds: dict[str, str]) -> None:
    """Widen `kinds` to hold every value of a batch read as text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        kind = kinds[name]
        if kind == "string" or column.null_count == len(column):
            continue
        for candidate in _WIDTH[max(1, _WIDTH.index(kind)):]:
            if candidate == "string":
                break
            try:
                pc.cast(column, arrow_type(candidate))
                break
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
        kinds[name] = candidate


# ---------------------------------------------------------------------------
# The driver's plan
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CsvFile:
    """One input file: its header as written and where its rows begin."""

    index: int
    path: str
    input_split: str
    columns: tuple[str, ...]
    size: int
    header_end: int


@dataclasses.dataclass(frozen=True)
class CsvRange:
    """Work for one worker: the lines of `file` starting in [start, stop),
    or the whole file (`whole`)."""

    file: CsvFile
    index: int
    start: int
    stop: int
    whole: bool = False

    @property
    def order(self) -> tuple[int, int]:
        return (self.file.index, self.index)

    @property
    def path(self) -> str:
        return self.file.path

    @property
    def input_split(self) -> str:
        return self.file.input_split


@dataclasses.dataclass
class CsvPlan:
    names: list[str]  # the columns, in the first file's order
    sample_kinds: dict[str, str]
    files: list[CsvFile]
    delimiter: str = ","

    def schema(self, kinds: dict[str, str]) -> Any:
        import pyarrow as pa

        return pa.schema([(n, arrow_type(kinds[n])) for n in self.names])

    def ranges(self, whole: set[str] = frozenset(), range_bytes: int | None = None) -> list[CsvRange]:
        """Byte ranges of every file (of `range_bytes`, default RANGE_BYTES);
        the files in `whole` in one piece."""
        range_bytes = range_bytes or RANGE_BYTES
        out = []
        for f in self.files:
            body = f.size - f.header_end
            if f.path in whole:
                out.append(CsvRange(f, 0, f.header_end, f.size, whole=True))
                continue
            n = max(1, -(-body // range_bytes))
            for i in range(n):
                start = f.header_end + i * range_bytes
                stop = f.size if i == n - 1 else start + range_bytes
                out.append(CsvRange(f, i, start, stop))
        return out


_QUOTE_OR_NEWLINE = re.compile(rb'["\r\n]')


def _header_end(path: str) -> int:
    """Where the first row begins: after the header record (a newline inside
    a quoted header field does not end it) and the empty lines before it."""
    with fs.open(path, "rb") as f:
        data = f.read(64 << 10)
        pos = 0
        while pos < len(data) and data[pos:pos + 1] in (b"\r", b"\n"):
            pos += 1
        quoted = False
        while True:
            m = _QUOTE_OR_NEWLINE.search(data, pos)
            if m is None or (m.group() == b"\r" and m.end() == len(data)):
                more = f.read(1 << 20)
                if not more:
                    return len(data)
                data += more
                continue
            pos = m.end()
            if m.group() == b'"':
                quoted = not quoted
            elif not quoted:
                return pos + 1 if m.group() == b"\r" and data[pos:pos + 1] == b"\n" else pos


# Delimiters a header written for another one is recognised by.
_DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


def _head(path: str, header_end: int) -> bytes:
    """The header and the first line after it."""
    with fs.open(path, "rb") as f:
        data = f.read(header_end + (64 << 10))
    nl = data.find(b"\n", header_end)
    return data if nl < 0 else data[:nl + 1]


def _columns(data: bytes, delimiter: str) -> tuple[list[str], int] | None:
    """The header's names and how many rows follow, read with `delimiter`;
    None if the rows do not all have one field per name."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    try:
        table = pcsv.read_csv(
            pa.BufferReader(data),
            # One thread: pyarrow 10's threaded read_csv can abort the process at exit after a parse error.
            read_options=pcsv.ReadOptions(use_threads=False),
            parse_options=pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            convert_options=pcsv.ConvertOptions(column_types={}, strings_can_be_null=True),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return None
    return table.column_names, table.num_rows


def delimiter_problem(path: str, head: bytes, header_end: int, delimiter: str) -> InputProblem | None:
    """An InputProblem when the header looks written for another delimiter:
    the configured one reads it as one column (or at most half as many as
    another), while another splits it into distinct, non-empty names and the
    first row into as many fields. A comma-separated header where one name
    holds a '|' is not one: '|' gives fewer columns there. `head`: the
    header (`header_end` bytes) and the line after it."""
    configured = _columns(head[:header_end], delimiter)
    if configured is None:
        return None  # The normal read reports what is wrong.
    names = configured[0]
    best: tuple[str, list[str]] | None = None
    for candidate in _DELIMITER_NAMES:
        if candidate == delimiter or candidate.encode() not in head[:header_end]:
            continue
        found = _columns(head, candidate)
        if found is None or found[1] < 1:
            continue  # no first row, or one with another field count: no evidence
        split, _ = found
        plausible = len(split) >= 2 and all(n.strip() for n in split) and len(set(split)) == len(split)
        if plausible and (len(names) == 1 or len(split) >= 2 * len(names)):
            if best is None or len(split) > len(best[1]):
                best = (candidate, split)
    if best is None:
        return None
    candidate, split = best
    shown = split if len(split) <= 30 else [*split[:30], "..."]
    label = _DELIMITER_NAMES[candidate]
    return InputProblem(
        f"The header of CSV file {path} looks {candidate!r}-delimited ({label}): split at {candidate!r} it "
        f"has the {len(split)} columns {shown}, and the first row as many fields, but with delimiter "
        f"{delimiter!r} it reads as {len(names)} column{'s' if len(names) != 1 else ''} "
        f"{names if len(names) <= 30 else [*names[:30], '...']}. Set delimiter={json.dumps(candidate)} on "
        f"CsvExampleGen if the file is {label}-separated, or fix the file."
    )


def plan_csv(files: dict[str, list[str]], delimiter: str = ",") -> CsvPlan:
    """Read each file's header and first block on the driver: the columns,
    the guessed types and the byte layout; InputProblem for an empty file, a
    header that looks written for another delimiter, a bad or differing
    header, or a header without rows."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    headers: dict[str, list[str]] = {}
    samples: dict[str, Any] = {}
    header_ends: dict[str, int] = {}
    sizes = {st.path: st.size for st in fs.stat_many([p for paths in files.values() for p in paths])}
    for paths in files.values():
        for path in paths:
            if sizes[path] == 0:
                raise InputProblem(
                    f"CSV file {path} is empty (0 bytes); expected a header line and rows. Remove the file "
                    f"or fill it."
                )
            header_ends[path] = _header_end(path)
            head = _head(path, header_ends[path])
            try:
                head[:header_ends[path]].decode("utf-8")
            except UnicodeDecodeError as e:
                # pyarrow would hand back undecodable column names.
                raise InputProblem(
                    f"CSV file {path}: the header is not valid UTF-8 (byte {e.start}: "
                    f"{head[e.start:e.start + 1]!r}); expected UTF-8 text. Re-encode the file as UTF-8."
                ) from None
            # Before reading rows: a wrong delimiter makes them look ragged.
            problem = delimiter_problem(path, head, header_ends[path], delimiter)
            if problem is not None:
                raise problem
            filesystem, inner = fs.arrow_filesystem(path)
            try:
                reader = pcsv.open_csv(filesystem.open_input_stream(inner), **_csv_options(delimiter=delimiter))
                names = reader.schema.names
                if len(set(names)) != len(names) or any(not n for n in names):
                    dupes = sorted({n for n in names if names.count(n) > 1})
                    raise InputProblem(
                        f"CSV file {path}: header {names} has "
                        f"{'duplicate column names ' + str(dupes) if dupes else 'an empty column name'}; "
                        f"each column needs a unique name."
                    )
                try:
                    first = reader.read_next_batch().num_rows
                except StopIteration:
                    first = 0
            except pa.ArrowInvalid as e:
                raise csv_problem(path, e, delimiter=delimiter) from None
            headers[path] = names
            samples[path] = (reader.schema, first)
    first_path, names = next(iter(headers.items()))
    for path, header in headers.items():
        if sorted(header) != sorted(names):
            raise InputProblem(
                f"CSV file {path} has columns {header} but {first_path} has {names}; every input "
                f"file must have the same header."
            )
    kinds = dict.fromkeys(names, "null")
    for path, (schema, rows) in samples.items():
        if rows == 0:
            raise InputProblem(
                f"CSV file {path} has a header but no rows; expected at least one row. Remove the file "
                f"or fill it."
            )
        for field in schema:
            kind = _narrowest(field.type)
            if _WIDTH.index(kind) > _WIDTH.index(kinds[field.name]):
                kinds[field.name] = kind
    planned = []
    for split, paths in files.items():
        for path in paths:
            planned.append(CsvFile(
                index=len(planned), path=path, input_split=split, columns=tuple(headers[path]),
                size=sizes[path], header_end=header_ends[path],
            ))
    return CsvPlan(names=names, sample_kinds=kinds, files=planned, delimiter=delimiter)


# ---------------------------------------------------------------------------
# The workers' reading
# ---------------------------------------------------------------------------


# Read past a range's nominal end by this much, to find where its last line
# ends without a second read (and copy) in the common case.
_OVERREAD = 1 << 16


def _read_lines(f: Any, item: CsvRange) -> tuple[Any, int, int]:
    """The bytes of the lines starting in [item.start, item.stop), as a
    pyarrow Buffer, how many quote characters they hold and where they
    begin in the file."""
    import pyarrow as pa

    first = item.index == 0
    origin = item.start if first else item.start - 1
    last = item.stop >= item.file.size
    f.seek(origin)
    data = f.read(item.file.size - origin if last else item.stop + _OVERREAD - origin)
    begin = 0
    if not first:
        # The first line starting at or after `start` (byte start - 1 ends the line before).
        nl = data.find(b"\n", 0, item.stop - origin)
        if nl < 0:
            return pa.py_buffer(b""), 0, item.stop  # No line starts here: the previous range reads it.
        begin = nl + 1
    end = len(data)
    tail: list[bytes] = []
    if not last and end > item.stop - origin:
        # The last line is the one holding byte stop - 1; the next range starts after it.
        nl = data.find(b"\n", item.stop - 1 - origin)
        if nl >= 0:
            end = nl + 1
        else:  # A line longer than the over-read: read on to its end.
            while chunk := f.read(1 << 20):
                nl = chunk.find(b"\n")
                tail.append(chunk if nl < 0 else chunk[:nl + 1])
                if nl >= 0:
                    break
    quotes = data.count(b'"', begin, end) + sum(t.count(b'"') for t in tail)
    view = memoryview(data)[begin:end]
    return pa.py_buffer(b"".join([view, *tail]) if tail else view), quotes, origin + begin


def _inside_quotes(f: Any, item: CsvRange, position: int) -> bool:
    """Whether `position` (where a range's lines begin) is inside a quoted
    field: an odd number of quote characters since the header. Read only
    when a range fails, to tell bad input from a range that began mid-field."""
    f.seek(item.file.header_end)
    left, quotes = position - item.file.header_end, 0
    while left > 0 and (chunk := f.read(min(left, 8 << 20))):
        quotes += chunk.count(b'"')
        left -= len(chunk)
    return quotes % 2 == 1


def _parse_parallel(data: Any, options: dict[str, Any], cuttable: bool) -> Iterator[Any]:
    """The batches of a buffer of whole CSV lines, in order. pyarrow's
    streaming reader parses on one thread (its threaded read_csv can hang
    or abort the process after a parse error: apache/arrow#43741, #34314),
    so a buffer without quote characters (where every newline ends a row)
    is cut at newlines into one piece per CPU, parsed side by side (parsing
    releases the GIL)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa
    import pyarrow.csv as pcsv

    def parse(piece: Any) -> list[Any]:
        return list(pcsv.open_csv(pa.BufferReader(piece), **options))

    pieces = _cut_at_newlines(data, os.cpu_count() or 1) if cuttable and data.size > 2 * _PARSE_BLOCK else [data]
    if len(pieces) == 1:
        yield from pcsv.open_csv(pa.BufferReader(data), **options)
        return
    with ThreadPoolExecutor(len(pieces), thread_name_prefix="csv-parse") as pool:
        for batches in pool.map(parse, pieces):
            yield from batches


def _cut_at_newlines(data: Any, n: int) -> list[Any]:
    """`data` (a pyarrow Buffer of whole lines) cut into at most `n` slices
    of whole lines, of about equal size."""
    view = memoryview(data)
    size, pieces, start = len(view), [], 0
    for i in range(1, n):
        at = max(start, size * i // n)
        while at < size:  # the first newline at or after `at`, read 64 kB at a time
            found = bytes(view[at:at + (64 << 10)]).find(b"\n")
            if found >= 0:
                at += found + 1
                break
            at += 64 << 10
        if at >= size:
            break
        pieces.append(data.slice(start, at - start))
        start = at
    pieces.append(data.slice(start))
    return pieces


@dataclasses.dataclass(frozen=True)
class CsvReader:
    """Reads a CsvRange on a worker: into batches of the columns `names` in
    `schema`'s types (`batches`), or into the kinds its values need (`kinds`)."""

    names: tuple[str, ...]
    schema: Any  # pyarrow.Schema
    exact: bool = False  # types known from every value: a conversion error is bad input
    delimiter: str = ","

    def batches(self, item: CsvRange) -> Iterator[Any]:
        import pyarrow as pa

        types = {f.name: f.type for f in self.schema}
        for batch in self._read(item, types):
            if list(batch.schema.names) != list(self.names):
                batch = pa.RecordBatch.from_arrays([batch.column(n) for n in self.names], schema=self.schema)
            yield batch

    def kinds(self, item: CsvRange) -> dict[str, str]:
        """The narrowest kind of each column that holds this range's values."""
        import pyarrow as pa

        kinds = dict.fromkeys(self.names, "null")
        for batch in self._read(item, {n: pa.string() for n in self.names}):
            _batch_kinds(batch, kinds)
        return kinds

    def _read(self, item: CsvRange, types: dict[str, Any]) -> Iterator[Any]:
        import pyarrow as pa
        import pyarrow.csv as pcsv

        begin = item.start
        try:
            with open_on_worker(item.path) as f:
                if item.whole:
                    reader = pcsv.open_csv(
                        pa.PythonFile(f, mode="r"),
                        **_csv_options(types, block_size=_PARSE_BLOCK, newlines_in_values=True,
                                       delimiter=self.delimiter),
                    )
                    yield from reader
                    return
                data, quotes, begin = _read_lines(f, item)
            if not data.size:
                return
            if quotes % 2:
                raise RetryNeeded("resplit", item.path)
            options = _csv_options(types, column_names=list(item.file.columns), block_size=_PARSE_BLOCK,
                                   newlines_in_values=quotes > 0, delimiter=self.delimiter)
            yield from _parse_parallel(data, options, quotes == 0)
        except pa.ArrowInvalid as e:
            if not item.whole and item.index > 0:
                # A range that began inside a quoted field (one holding a
                # newline) parses as nonsense: read the file whole instead.
                with open_on_worker(item.path) as f:
                    if _inside_quotes(f, item, begin):
                        raise RetryNeeded("resplit", item.path) from None
            if "conversion error" in str(e) and not self.exact:
                raise RetryNeeded("types", str(e)) from None
            raise csv_problem(item.path, e, open_on_worker, self.delimiter) from None
