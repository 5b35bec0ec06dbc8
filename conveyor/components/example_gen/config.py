"""ExampleGen's configuration: which input files form which splits (TFX's
example_gen_pb2.Input / Output, as plain dataclasses), checked when the
component is built."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence

from conveyor.errors import PipelineDefinitionError

__all__ = [
    "InputSplit",
    "Input",
    "InputConfig",
    "SplitBucket",
    "SplitConfig",
    "Output",
    "OutputConfig",
    "DEFAULT_SPLITS",
    "SPEC",
    "check_configs",
    "output_split_names",
]


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

DEFAULT_SPLITS = (SplitBucket("train", 2), SplitBucket("eval", 1))
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_-]+")
SPEC = re.compile(r"\{(SPAN|VERSION)(?::(\d+))?\}")


def _check_split_name(where: str, kind: str, name: str, seen: set[str]) -> None:
    """A split name must be a unique run of letters, digits, '_' or '-'."""
    if not _SPLIT_NAME.fullmatch(name or "") or name in seen:
        raise PipelineDefinitionError(
            f"{where}: {kind} split name {name!r} must be unique letters, digits, '_' or '-'."
        )
    seen.add(name)


def check_configs(where: str, input_config: Input, output_config: Output) -> None:
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
        _check_split_name(where, "input", s.name, seen)
        if not s.pattern or os.path.isabs(s.pattern):
            raise PipelineDefinitionError(
                f"{where}: input split {s.name!r} pattern {s.pattern!r} must be a non-empty glob "
                f"relative to input_base, e.g. '*.csv' or 'span-{{SPAN}}/*'."
            )
        kinds = [m.group(1) for m in SPEC.finditer(s.pattern)]
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
        leftover = SPEC.sub("", s.pattern)
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
        _check_split_name(where, "output", b.name, seen)
        if not isinstance(b.hash_buckets, int) or isinstance(b.hash_buckets, bool) or b.hash_buckets <= 0:
            raise PipelineDefinitionError(
                f"{where}: output split {b.name!r} hash_buckets must be a positive int, "
                f"got {b.hash_buckets!r}."
            )


def output_split_names(input_config: Input, output_config: Output) -> list[str]:
    """The output splits, in order: the input splits when there are several,
    else the hash buckets' splits (train, eval by default)."""
    if len(input_config.splits) > 1:
        return [s.name for s in input_config.splits]
    return [b.name for b in (output_config.split_config or SplitConfig(splits=DEFAULT_SPLITS)).splits]
