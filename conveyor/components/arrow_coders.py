"""Beam coders for the Arrow tables and record batches our pipelines move.

Without them Beam pickles an Arrow element twice over: when it crosses a
fusion break, and when it samples element sizes (every PCollection's first
ten elements, then fewer), which it does by encoding the element. On the
1.5M-row taxi data that pickling was about a tenth of Transform's time and
of StatisticsGen's. These encode with Arrow's IPC stream format (one copy
of the buffers) and estimate a size from the buffers without encoding.

A coder applies to a PCollection whose element type is `pa.Table` or
`pa.RecordBatch`: our own steps declare it (`with_output_types`), and
`register()` (called by ExecutionContext.beam_pipeline) puts the coders in
Beam's registry. Import this module only where Beam is wanted: it imports
Beam and pyarrow.
"""

from __future__ import annotations

import threading
from typing import Any

import pyarrow as pa
from apache_beam import coders

__all__ = ["ArrowTableCoder", "ArrowRecordBatchCoder", "register"]


class _ArrowCoder(coders.Coder):
    """Arrow's IPC stream format; the size estimate is the buffers' size.
    Subclasses say what they hold and how it goes in and out of a stream."""

    def encode(self, value: Any) -> bytes:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, value.schema) as writer:
            self._write(writer, value)
        return sink.getvalue().to_pybytes()

    def _write(self, writer: Any, value: Any) -> None:
        raise NotImplementedError

    def estimate_size(self, value: Any) -> int:
        return int(value.nbytes)

    def is_deterministic(self) -> bool:
        return False


class ArrowTableCoder(_ArrowCoder):
    """A pyarrow Table as an Arrow IPC stream."""

    def _write(self, writer: Any, value: Any) -> None:
        writer.write_table(value)

    def decode(self, encoded: bytes) -> Any:
        return pa.ipc.open_stream(encoded).read_all()

    def to_type_hint(self) -> Any:
        return pa.Table


class ArrowRecordBatchCoder(_ArrowCoder):
    """A pyarrow RecordBatch as an Arrow IPC stream of that one batch."""

    def _write(self, writer: Any, value: Any) -> None:
        writer.write_batch(value)

    def decode(self, encoded: bytes) -> Any:
        return pa.ipc.open_stream(encoded).read_next_batch()

    def to_type_hint(self) -> Any:
        return pa.RecordBatch


_LOCK = threading.Lock()


def register() -> None:
    """Put both coders in Beam's coder registry, again if a library put its
    own there since: TFDV registers a pickling coder for RecordBatch when it
    is imported."""
    with _LOCK:
        for arrow_type, coder in ((pa.Table, ArrowTableCoder), (pa.RecordBatch, ArrowRecordBatchCoder)):
            if not isinstance(coders.registry.get_coder(arrow_type), coder):
                coders.registry.register_coder(arrow_type, coder)
