"""Evaluator: computes TFMA metrics of a model on raw examples, sliced, and
blesses the model when every metric threshold holds.

The configuration is either a real `tfma.EvalConfig` proto or the plain
dataclasses below, which mirror it field for field so that a pipeline can be
defined without importing TensorFlow. They become a `tfma.EvalConfig` in the
executor.

Blessing follows TFX: the model is blessed when TFMA's validation passes.
Without a baseline model (the first run), change thresholds are dropped and the
model is blessed on its value thresholds alone ("rubber stamp"). An evaluation
without any threshold never blesses.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
from typing import Any

from conveyor import fs
from conveyor.artifacts import Artifact, Examples, Model, ModelBlessing, ModelEvaluation, Schema
from conveyor.components import fast_eval
from conveyor.components.base import ExecutionContext, skip_autograph_for_libraries
from conveyor.errors import PipelineDefinitionError
from conveyor.pipeline.dsl import Component, Input

__all__ = [
    "Evaluator",
    "EvaluatorParams",
    "EvalConfig",
    "ModelSpec",
    "SlicingSpec",
    "MetricsSpec",
    "MetricConfig",
    "MetricThreshold",
    "PerSliceMetricThreshold",
    "GenericValueThreshold",
    "GenericChangeThreshold",
    "MetricDirection",
    "HIGHER_IS_BETTER",
    "LOWER_IS_BETTER",
    "BLESSED_FILE",
    "NOT_BLESSED_FILE",
    "SERVING_MODEL_DIR",
    "TFMA_ONLY_ENV",
    "to_tfma_eval_config",
    "run",
]

BLESSED_FILE = "BLESSED"
NOT_BLESSED_FILE = "NOT_BLESSED"
# Where a Model artifact keeps its serving SavedModel (see conveyor.artifacts.Model).
SERVING_MODEL_DIR = "Format-Serving"
_CANDIDATE, _BASELINE = "candidate", "baseline"  # tfma.CANDIDATE_KEY / tfma.BASELINE_KEY
_TFMA_EVAL_CONFIG = "tensorflow_model_analysis.EvalConfig"
# Set (non-empty) to run every evaluation through TFMA's own Beam path, even
# when conveyor.components.fast_eval could compute it on whole batches.
TFMA_ONLY_ENV = "CONVEYOR_EVALUATOR_TFMA_ONLY"


# -- the typed configuration (mirrors tensorflow_model_analysis/proto/config.proto) --


class MetricDirection(enum.Enum):
    """Which way a metric improves; the direction of a change threshold."""

    HIGHER_IS_BETTER = "HIGHER_IS_BETTER"
    LOWER_IS_BETTER = "LOWER_IS_BETTER"


HIGHER_IS_BETTER = MetricDirection.HIGHER_IS_BETTER
LOWER_IS_BETTER = MetricDirection.LOWER_IS_BETTER


@dataclasses.dataclass(frozen=True)
class GenericValueThreshold:
    """The metric must lie within [lower_bound, upper_bound] (None: unbounded)."""

    lower_bound: float | None = None
    upper_bound: float | None = None


@dataclasses.dataclass(frozen=True)
class GenericChangeThreshold:
    """The metric may move against `direction`, compared with the baseline, by
    at most `absolute` (candidate - baseline) and/or `relative` ((c - b) / b)."""

    direction: MetricDirection
    absolute: float | None = None
    relative: float | None = None


@dataclasses.dataclass(frozen=True)
class MetricThreshold:
    value_threshold: GenericValueThreshold | None = None
    change_threshold: GenericChangeThreshold | None = None


@dataclasses.dataclass(frozen=True)
class SlicingSpec:
    """A slice of the data: overall (no keys), by the values of raw features
    (`feature_keys`), or one fixed value per feature (`feature_values`)."""

    feature_keys: list[str] = dataclasses.field(default_factory=list)
    feature_values: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class PerSliceMetricThreshold:
    """A threshold checked only on the given slices (e.g. [SlicingSpec()]: overall)."""

    slicing_specs: list[SlicingSpec]
    threshold: MetricThreshold


@dataclasses.dataclass(frozen=True)
class MetricConfig:
    """One metric: a Keras metric (e.g. "BinaryAccuracy", "AUC") or a TFMA one
    (e.g. "ExampleCount"), with its constructor arguments in `config`.

    `threshold` is checked on every slice of `EvalConfig.slicing_specs` (as
    TFMA does); `per_slice_thresholds` only on the slices they name."""

    class_name: str
    module: str = ""
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    threshold: MetricThreshold | None = None
    per_slice_thresholds: list[PerSliceMetricThreshold] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class MetricsSpec:
    metrics: list[MetricConfig] = dataclasses.field(default_factory=list)
    # Empty: every model (the candidate, and the baseline when there is one).
    model_names: list[str] = dataclasses.field(default_factory=list)
    output_names: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How to call a model. `label_key` is looked up among the transformed
    features first (when `preprocessing_function_names` name signatures such as
    "transform_features"), then among the raw features."""

    name: str = ""
    signature_name: str = ""
    label_key: str = ""
    prediction_key: str = ""
    example_weight_key: str = ""
    preprocessing_function_names: list[str] = dataclasses.field(default_factory=list)
    is_baseline: bool = False


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    model_specs: list[ModelSpec] = dataclasses.field(default_factory=list)
    slicing_specs: list[SlicingSpec] = dataclasses.field(default_factory=list)
    metrics_specs: list[MetricsSpec] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class EvaluatorParams:
    # An EvalConfig above or a tfma.EvalConfig proto; checked by Evaluator.check().
    eval_config: EvalConfig | Any
    example_splits: list[str] = dataclasses.field(default_factory=lambda: ["eval"])


class Evaluator(Component):
    """Evaluates `model` on the `example_splits` of `examples` with TFMA, per
    slice, against an optional `baseline_model` (the latest blessed model; an
    empty list on the first run). Writes TFMA's results to `evaluation`
    (`tfma.load_eval_result(uri)`) and its verdict to `blessing`: an empty file
    BLESSED or NOT_BLESSED, and TFX's custom properties: `blessed` 1 or 0 and
    the models compared (`current_model_id`, `baseline_model_id`, URIs)."""

    INPUTS = {
        "examples": Input(Examples),
        "model": Input(Model),
        "baseline_model": Input(Model, optional=True),
        "schema": Input(Schema, optional=True),
    }
    OUTPUTS = {"evaluation": ModelEvaluation, "blessing": ModelBlessing}
    Params = EvaluatorParams
    EXECUTOR = "conveyor.components.evaluator:run"
    EXECUTOR_IMPORTS = ("tensorflow_model_analysis",)
    USES_BEAM = True

    def check(self) -> None:
        config = self.params.eval_config
        if _is_tfma_proto(config):
            specs = _proto_model_specs(config)
            metric_names = [m.class_name for ms in config.metrics_specs for m in ms.metrics]
        elif isinstance(config, EvalConfig):
            _check_dataclass_config(self._where(), config)
            specs = [(s.name, s.is_baseline) for s in config.model_specs]
            metric_names = [m.class_name for ms in config.metrics_specs for m in ms.metrics]
        else:
            raise PipelineDefinitionError(
                f"{self._where()} parameter 'eval_config' expects "
                f"conveyor.components.evaluator.EvalConfig or a tfma.EvalConfig proto, got "
                f"{type(config).__name__} {config!r}."
            )
        if not metric_names:
            raise PipelineDefinitionError(
                f"{self._where()} eval_config has no metrics; add a MetricsSpec with at least "
                f"one MetricConfig, e.g. MetricConfig(class_name='BinaryAccuracy')."
            )
        if len(specs) > 2 or sum(baseline for _, baseline in specs) > 1:
            raise PipelineDefinitionError(
                f"{self._where()} eval_config has model specs {specs}; give one ModelSpec (the "
                f"baseline copy is added when a baseline model is present), or two named "
                f"{_CANDIDATE!r} and {_BASELINE!r} with is_baseline=True on the second."
            )
        if not self.params.example_splits or not all(
            isinstance(s, str) and s for s in self.params.example_splits
        ):
            raise PipelineDefinitionError(
                f"{self._where()} parameter 'example_splits' must name at least one split, "
                f"e.g. ['eval']; got {self.params.example_splits!r}."
            )
        if self.has_change_thresholds() and "baseline_model" not in self.inputs:
            raise PipelineDefinitionError(
                f"{self._where()} has change thresholds but no 'baseline_model' input, so they "
                f"would never be checked. Pass baseline_model= the output of a latest blessed "
                f"model resolver, or drop the change_threshold."
            )

    def has_thresholds(self) -> bool:
        """True when some metric has a value or change threshold: without one
        the Evaluator never blesses a model."""
        return bool(_threshold_kinds(self.params.eval_config))

    def has_change_thresholds(self) -> bool:
        return "change" in _threshold_kinds(self.params.eval_config)


# -- construction-time helpers (no TensorFlow) ----------------------------------------


def _is_tfma_proto(value: Any) -> bool:
    descriptor = getattr(value, "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", None) == _TFMA_EVAL_CONFIG


def _proto_model_specs(config: Any) -> list[tuple[str, bool]]:
    return [(s.name, s.is_baseline) for s in config.model_specs]


def _check_dataclass_config(where: str, config: EvalConfig) -> None:
    checks = [
        ("model_specs", config.model_specs, ModelSpec),
        ("slicing_specs", config.slicing_specs, SlicingSpec),
        ("metrics_specs", config.metrics_specs, MetricsSpec),
    ]
    for field, items, cls in checks:
        for item in items:
            if not isinstance(item, cls):
                raise PipelineDefinitionError(
                    f"{where} eval_config.{field} holds {type(item).__name__} {item!r}; expected "
                    f"{cls.__name__} objects from conveyor.components.evaluator."
                )
    for spec in config.metrics_specs:
        for metric in spec.metrics:
            if not isinstance(metric, MetricConfig) or not metric.class_name:
                raise PipelineDefinitionError(
                    f"{where} eval_config.metrics_specs holds {metric!r}; expected "
                    f"MetricConfig(class_name=...)."
                )
            thresholds = [metric.threshold] if metric.threshold is not None else []
            for per_slice in metric.per_slice_thresholds:
                if not isinstance(per_slice, PerSliceMetricThreshold) or not all(
                    isinstance(s, SlicingSpec) for s in per_slice.slicing_specs
                ):
                    raise PipelineDefinitionError(
                        f"{where} metric {metric.class_name!r} per_slice_thresholds holds "
                        f"{per_slice!r}; expected PerSliceMetricThreshold(slicing_specs=[SlicingSpec(...)], "
                        f"threshold=MetricThreshold(...))."
                    )
                thresholds.append(per_slice.threshold)
            for threshold in thresholds:
                _check_threshold(where, metric.class_name, threshold)


def _check_threshold(where: str, metric: str, threshold: Any) -> None:
    if not isinstance(threshold, MetricThreshold):
        raise PipelineDefinitionError(
            f"{where} metric {metric!r} threshold must be a MetricThreshold, "
            f"got {type(threshold).__name__} {threshold!r}."
        )
    value, change = threshold.value_threshold, threshold.change_threshold
    if value is None and change is None:
        raise PipelineDefinitionError(
            f"{where} metric {metric!r} has an empty MetricThreshold; set value_threshold "
            f"and/or change_threshold."
        )
    if value is not None and value.lower_bound is None and value.upper_bound is None:
        raise PipelineDefinitionError(
            f"{where} metric {metric!r} has a GenericValueThreshold without bounds; set "
            f"lower_bound and/or upper_bound."
        )
    if change is not None:
        if not isinstance(change.direction, MetricDirection):
            raise PipelineDefinitionError(
                f"{where} metric {metric!r} change threshold direction must be "
                f"HIGHER_IS_BETTER or LOWER_IS_BETTER, got {change.direction!r}."
            )
        if change.absolute is None and change.relative is None:
            raise PipelineDefinitionError(
                f"{where} metric {metric!r} has a GenericChangeThreshold without a bound; set "
                f"absolute and/or relative."
            )


def _threshold_kinds(config: Any) -> set[str]:
    """{"value", "change"}: the kinds of thresholds the config sets anywhere."""
    kinds: set[str] = set()
    if isinstance(config, EvalConfig):
        for spec in config.metrics_specs:
            for metric in spec.metrics:
                thresholds = [metric.threshold] + [t.threshold for t in metric.per_slice_thresholds]
                for threshold in thresholds:
                    if threshold is not None and threshold.value_threshold is not None:
                        kinds.add("value")
                    if threshold is not None and threshold.change_threshold is not None:
                        kinds.add("change")
        return kinds
    if _is_tfma_proto(config):

        def add(threshold: Any) -> None:
            for kind in ("value", "change"):
                if threshold.HasField(f"{kind}_threshold"):
                    kinds.add(kind)

        for spec in config.metrics_specs:
            for metric in spec.metrics:
                add(metric.threshold)
                for t in list(metric.per_slice_thresholds) + list(metric.cross_slice_thresholds):
                    add(t.threshold)
            for threshold in spec.thresholds.values():
                add(threshold)
            for group in list(spec.per_slice_thresholds.values()) + list(
                spec.cross_slice_thresholds.values()
            ):
                for t in group.thresholds:
                    add(t.threshold)
    return kinds


# -- executor ---------------------------------------------------------------------------


def to_tfma_eval_config(config: Any) -> Any:
    """A tfma.EvalConfig from our dataclasses (a copy if it already is one)."""
    import tensorflow_model_analysis as tfma

    if _is_tfma_proto(config):
        copy = tfma.EvalConfig()
        copy.CopyFrom(config)
        return copy

    def threshold(t: MetricThreshold) -> Any:
        proto = tfma.MetricThreshold()
        if t.value_threshold is not None:
            v = t.value_threshold
            if v.lower_bound is not None:
                proto.value_threshold.lower_bound.value = v.lower_bound
            if v.upper_bound is not None:
                proto.value_threshold.upper_bound.value = v.upper_bound
        if t.change_threshold is not None:
            c = t.change_threshold
            proto.change_threshold.direction = getattr(tfma.MetricDirection, c.direction.value)
            if c.absolute is not None:
                proto.change_threshold.absolute.value = c.absolute
            if c.relative is not None:
                proto.change_threshold.relative.value = c.relative
        return proto

    def metric(m: MetricConfig) -> Any:
        proto = tfma.MetricConfig(class_name=m.class_name, module=m.module)
        if m.config:
            proto.config = json.dumps(m.config, sort_keys=True)
        if m.threshold is not None:
            proto.threshold.CopyFrom(threshold(m.threshold))
        for per_slice in m.per_slice_thresholds:
            proto.per_slice_thresholds.add(
                slicing_specs=[slicing(spec) for spec in per_slice.slicing_specs],
                threshold=threshold(per_slice.threshold),
            )
        return proto

    def slicing(spec: SlicingSpec) -> Any:
        return tfma.SlicingSpec(
            feature_keys=list(spec.feature_keys), feature_values=dict(spec.feature_values)
        )

    return tfma.EvalConfig(
        model_specs=[
            tfma.ModelSpec(
                name=s.name,
                signature_name=s.signature_name,
                label_key=s.label_key,
                prediction_key=s.prediction_key,
                example_weight_key=s.example_weight_key,
                preprocessing_function_names=list(s.preprocessing_function_names),
                is_baseline=s.is_baseline,
            )
            for s in config.model_specs
        ],
        slicing_specs=[slicing(s) for s in config.slicing_specs],
        metrics_specs=[
            tfma.MetricsSpec(
                metrics=[metric(m) for m in spec.metrics],
                model_names=list(spec.model_names),
                output_names=list(spec.output_names),
            )
            for spec in config.metrics_specs
        ],
    )


def _serving_path(model: Artifact, role: str, ctx: ExecutionContext) -> str:
    path = fs.join(model.uri, SERVING_MODEL_DIR)
    if not fs.isfile(fs.join(path, "saved_model.pb")):
        raise ctx.error(
            f"the {role} model {model!r} has no SavedModel at {path} (expected "
            f"{SERVING_MODEL_DIR}/saved_model.pb, as the Trainer writes it). Check that the "
            f"'{role}' input comes from a Trainer's 'model' output."
        )
    return path


def _single(inputs: dict[str, list[Artifact]], key: str, ctx: ExecutionContext) -> Artifact | None:
    artifacts = inputs.get(key) or []
    if len(artifacts) > 1:
        raise ctx.error(f"input {key!r} must hold at most one artifact, got {len(artifacts)}: {artifacts}.")
    return artifacts[0] if artifacts else None


def _read_serialized_examples(pipeline: Any, examples: Examples, split: str) -> Any:
    """A PCollection of serialized tf.Example rows of one split, whatever the file format."""
    import apache_beam as beam

    from conveyor.components import examples_io

    if examples_io.file_format(examples) == examples_io.TFRECORDS_GZIP:
        return pipeline | f"ReadTFRecord[{split}]" >> beam.io.ReadFromTFRecord(
            examples_io.file_pattern(examples, split)
        )
    return examples_io.beam_read_batches(
        pipeline, examples, split, label=f"ReadBatches[{split}]"
    ) | f"ToTFExample[{split}]" >> beam.FlatMap(examples_io.encode_examples)


def _direct_runner(beam_args: list[str]) -> bool:
    """Whether the Beam flags name Beam's local DirectRunner (the default)."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    runner = PipelineOptions(list(beam_args)).view_as(StandardOptions).runner
    return (runner or "DirectRunner").lower() in ("directrunner", "direct", "switchingdirectrunner",
                                                   "bundlebaseddirectrunner")


def run(
    inputs: dict[str, list[Artifact]],
    outputs: dict[str, list[Artifact]],
    params: EvaluatorParams,
    ctx: ExecutionContext,
) -> str:
    """Evaluates, writes the blessing, and returns the verdict in one line."""
    import apache_beam as beam
    import tensorflow_model_analysis as tfma
    from tfx_bsl.public import tfxio

    from conveyor.components import examples_io

    examples = _single(inputs, "examples", ctx)
    model = _single(inputs, "model", ctx)
    baseline = _single(inputs, "baseline_model", ctx)
    schema_artifact = _single(inputs, "schema", ctx)
    if examples is None or model is None:
        raise ctx.error("inputs 'examples' and 'model' are required.")
    evaluation, blessing = outputs["evaluation"][0], outputs["blessing"][0]
    # TFMA loads the models and writes its results through tf.io.gfile.
    fs.enable_tensorflow([examples.uri, model.uri, evaluation.uri])

    # Check every input before writing anything.
    for split in params.example_splits:
        if not examples_io.split_files(examples, split):
            raise ctx.error(
                f"examples {examples.uri} have no data files for split {split!r} (looked for "
                f"{examples_io.file_pattern(examples, split)}; its splits are {examples.splits}). "
                f"Set example_splits= to existing splits."
            )
    model_path = _serving_path(model, "model", ctx)
    baseline_path = _serving_path(baseline, "baseline_model", ctx) if baseline is not None else None
    schema = _read_schema(schema_artifact, ctx) if schema_artifact is not None else None
    if schema is not None and examples_io.file_format(examples) == examples_io.PARQUET:
        for split in params.example_splits:
            _check_parquet_types(examples_io.split_files(examples, split)[0], schema, ctx)
    has_baseline = baseline is not None
    user_config = to_tfma_eval_config(params.eval_config)
    # No baseline (the first run): change thresholds are dropped and value
    # thresholds alone decide, TFMA's "rubber stamp".
    try:
        eval_config = tfma.utils.update_eval_config_with_defaults(
            user_config, has_baseline=has_baseline, rubber_stamp=not has_baseline
        )
        tfma.utils.verify_eval_config(eval_config)
    except (ValueError, RuntimeError) as e:
        raise ctx.error(f"eval_config is not valid for TFMA: {e}") from e
    skip_autograph_for_libraries()
    # On the DirectRunner the common configurations are computed here on whole
    # batches (the model loaded once), writing TFMA's own files; anything
    # else, and every run on a distributed runner, goes through TFMA's Beam pipeline.
    batched = not (os.environ.get(TFMA_ONLY_ENV) or "").strip() and _direct_runner(ctx.beam_pipeline_args)
    if batched and fast_eval.evaluate(
        eval_config=eval_config,
        examples=examples,
        splits=list(params.example_splits),
        model_path=model_path,
        output_path=evaluation.uri,
        rubber_stamp=not has_baseline,
    ):
        return _bless(user_config, evaluation, blessing, model, baseline, has_baseline)
    models = []
    for spec in eval_config.model_specs:
        if spec.is_baseline and baseline_path is None:
            raise ctx.error(
                f"eval_config has a baseline ModelSpec {spec.name!r} but no baseline model was given."
            )
        models.append(
            tfma.default_eval_shared_model(
                eval_saved_model_path=baseline_path if spec.is_baseline else model_path,
                model_name=spec.name,
                eval_config=eval_config,
                rubber_stamp=not has_baseline,
            )
        )
    eval_shared_model = models[0] if len(models) == 1 else models

    with ctx.beam_pipeline() as p:
        records = [_read_serialized_examples(p, examples, split) for split in params.example_splits]
        records = records | "FlattenSplits" >> beam.Flatten()
        tensor_adapter_config = None
        if tfma.is_batched_input(eval_shared_model, eval_config):
            source = tfxio.TFExampleBeamRecord(
                physical_format="inmem",
                telemetry_descriptors=["Conveyor", "Evaluator"],
                schema=schema,
                raw_record_column_name=tfma.ARROW_INPUT_COLUMN,
            )
            records = records | "ToArrow" >> source.BeamSource()
            if schema is not None:
                tensor_adapter_config = tfxio.TensorAdapterConfig(
                    arrow_schema=source.ArrowSchema(),
                    tensor_representations=source.TensorRepresentations(),
                )
        _ = records | "ExtractEvaluateAndWriteResults" >> tfma.ExtractEvaluateAndWriteResults(
            eval_shared_model=eval_shared_model,
            eval_config=eval_config,
            output_path=evaluation.uri,
            tensor_adapter_config=tensor_adapter_config,
        )

    return _bless(user_config, evaluation, blessing, model, baseline, has_baseline)


def _bless(user_config: Any, evaluation: Artifact, blessing: Artifact, model: Artifact,
           baseline: Artifact | None, has_baseline: bool) -> str:
    """Writes the blessing from TFMA's validation result; the verdict in one line."""
    import tensorflow_model_analysis as tfma

    # An evaluation without thresholds validates nothing: it must not bless
    # (TFX's rule, so that forgetting thresholds never pushes a model).
    kinds = _threshold_kinds(user_config)
    thresholds = bool(kinds)
    validation = tfma.load_validation_result(evaluation.uri)
    blessed = thresholds and validation.validation_ok
    fs.write_bytes(fs.join(blessing.uri, BLESSED_FILE if blessed else NOT_BLESSED_FILE), b"")
    # Custom properties, typed as TFX's readers (its LatestPolicyModel) expect them.
    blessing.set("blessed", int(blessed))
    blessing.set("current_model", model.uri)
    if model.id is not None:
        blessing.set("current_model_id", model.id)
    if baseline is not None:
        blessing.set("baseline_model", baseline.uri)
        if baseline.id is not None:
            blessing.set("baseline_model_id", baseline.id)
    if not thresholds:
        verdict = "NOT_BLESSED: eval_config has no thresholds, so the model is never blessed"
    elif blessed:
        skipped = not has_baseline and "change" in kinds
        verdict = "BLESSED" + (" (no baseline model yet: change thresholds skipped)" if skipped else "")
    else:
        verdict = "NOT_BLESSED: " + _failures(validation)
    return verdict  # The orchestrator shows it next to the component's state.


def _failures(validation: Any) -> str:
    """The failed thresholds of a tfma ValidationResult, one short phrase each."""
    from google.protobuf import text_format

    found = []
    for per_slice in validation.metric_validations_per_slice:
        keys = [
            f"{k.column}={getattr(k, k.ListFields()[-1][0].name)!r}"
            for k in per_slice.slice_key.single_slice_keys
        ]
        where = ", ".join(keys) or "Overall"
        for failure in per_slice.failures:
            name = failure.metric_key.name + ("_diff" if failure.metric_key.is_diff else "")
            value = failure.metric_value
            shown = f"{value.double_value.value:.4g}" if value.HasField("double_value") else "no value"
            threshold = text_format.MessageToString(failure.metric_threshold, as_one_line=True)
            found.append((bool(keys), where, f"{name}={shown} on slice {where} fails {{{threshold}}}"))
    # The overall slice first, then the others in a stable order (Beam gives any order).
    lines = [line for _, _, line in sorted(found, key=lambda f: (f[0], f[1]))]
    for missing in validation.missing_slices:
        lines.append(f"slice {{{text_format.MessageToString(missing, as_one_line=True)}}} has no examples")
    more = f" (and {len(lines) - 5} more)" if len(lines) > 5 else ""
    return "; ".join(lines[:5]) + more if lines else "validation failed"


def _check_parquet_types(path: str, schema: Any, ctx: ExecutionContext) -> None:
    """Parquet columns must have the schema's types: the tf.Examples made from
    them are decoded with the schema, and a mismatch fails deep inside Beam."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tensorflow_metadata.proto.v0 import schema_pb2

    fits = {
        schema_pb2.INT: lambda t: pa.types.is_integer(t) or pa.types.is_boolean(t),
        schema_pb2.FLOAT: pa.types.is_floating,
        schema_pb2.BYTES: lambda t: (
            pa.types.is_string(t)
            or pa.types.is_binary(t)
            or pa.types.is_large_string(t)
            or pa.types.is_large_binary(t)
        ),
    }
    with fs.open(path, "rb") as f:
        columns = pq.read_schema(f)
    for feature in schema.feature:
        if feature.name not in columns.names or feature.type not in fits:
            continue
        column_type = columns.field(feature.name).type
        if pa.types.is_list(column_type) or pa.types.is_large_list(column_type):
            column_type = column_type.value_type
        if not fits[feature.type](column_type):
            raise ctx.error(
                f"column {feature.name!r} of {path} is {column_type} but the schema says "
                f"{schema_pb2.FeatureType.Name(feature.type)}. Pass the schema made from these "
                f"examples (SchemaGen on the same ExampleGen), or fix the column type."
            )


def _read_schema(schema: Artifact, ctx: ExecutionContext) -> Any:
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    path = fs.join(schema.uri, "schema.pbtxt")
    if not fs.isfile(path):
        raise ctx.error(f"schema {schema!r} has no {path}; pass a SchemaGen's 'schema' output.")
    try:
        return text_format.Parse(fs.read_text(path), schema_pb2.Schema())
    except text_format.ParseError as e:
        raise ctx.error(f"schema file {path} is not a text-format Schema: {e}") from e
