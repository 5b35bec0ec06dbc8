"""Split assignment: a deterministic, vectorised hash of each row (or of one
feature's value) over Arrow batches, and the hash buckets of the output
splits. The hash depends only on the row's values and the column types and
order, never on how rows are batched, read or distributed, so the same row
lands in the same split on every run and every runner."""

from __future__ import annotations

import dataclasses
from typing import Any

from conveyor.components.example_gen.config import DEFAULT_SPLITS, Input, Output, SplitConfig

__all__ = ["SplitPlan", "row_hashes", "hash_column", "mix"]

_NULL_HASH = 0x5BD1E9955BD1E995
_MULT = 0x100000001B3


def mix(x: Any) -> Any:
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
    return mix(h + lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))


def hash_column(arr: Any) -> Any:
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
        inner = hash_column(flat)
        lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy().astype(np.int64)
        row_of = np.repeat(np.arange(len(arr)), lengths)
        pos = np.arange(len(flat), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        h = np.zeros(len(arr), np.uint64)
        np.add.at(h, row_of, mix(inner + pos.astype(np.uint64)))
        h = mix(h + lengths.astype(np.uint64))
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


def row_hashes(batch: Any, feature: str = "") -> Any:
    """A uint64 hash of each row (all its values in column order), or of
    one feature's value."""
    import numpy as np

    if feature:
        return mix(hash_column(batch.column(batch.schema.get_field_index(feature))))
    h = np.zeros(batch.num_rows, np.uint64)
    with np.errstate(over="ignore"):
        for column in batch.columns:
            h = h * np.uint64(_MULT) + hash_column(column)
    return mix(h)


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    """Which output split each row goes to. With several input splits they
    pass through (`passthrough`); one input split is divided by the hash
    buckets, by the whole row or by `partition_feature`."""

    names: tuple[str, ...]
    buckets: tuple[int, ...] = ()
    partition_feature: str = ""

    @property
    def passthrough(self) -> bool:
        return not self.buckets

    @classmethod
    def of(cls, input_config: Input, output_config: Output) -> SplitPlan:
        if len(input_config.splits) > 1:
            return cls(names=tuple(s.name for s in input_config.splits))
        sc = output_config.split_config or SplitConfig(splits=DEFAULT_SPLITS)
        return cls(
            names=tuple(b.name for b in sc.splits),
            buckets=tuple(b.hash_buckets for b in sc.splits),
            partition_feature=sc.partition_feature_name,
        )

    def assign(self, batch: Any, input_split: str) -> list[tuple[str, Any]]:
        """(output split, the rows of `batch` that go there) for each output
        split; `input_split` names the split the batch was read for."""
        if self.passthrough:
            return [(input_split, batch)]
        import numpy as np
        import pyarrow as pa

        bounds = np.cumsum(self.buckets).astype(np.uint64)
        which = np.searchsorted(bounds, row_hashes(batch, self.partition_feature) % bounds[-1], side="right")
        return [(name, batch.filter(pa.array(which == i))) for i, name in enumerate(self.names)]
