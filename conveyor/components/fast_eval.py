"""The Evaluator's batch path: TFMA's metrics for the common configurations,
computed on whole batches with numpy instead of TFMA's per-example Beam path.

TFMA evaluates one example at a time (unbatching, slicing, one combiner call
per example and slice) and loads the model once per combiner instance (8 times
for the taxi model, 6 of them by its Keras-metrics combiner). For the
configurations this module supports, it loads the model once, calls its
signatures on batches of serialized examples, groups rows by the values of the
slicing features, sums sufficient statistics per group with `np.bincount`
and adds the groups up per slice.

What stays TFMA's own: the EvalConfig defaults, the metric keys (from
`metric_specs.to_computations`), the metric formulas (each confusion-matrix
metric's own `result(tp, tn, fp, fn)`), the slice keys (TFMA's slicer, called
on one representative row per group), the threshold checks
(`metrics_validator.validate_metrics`, `CombineValidations`) and the output
records (TFMA's writer's `convert_slice_*_to_proto`). The files written are
those `tfma.ExtractEvaluateAndWriteResults` writes: `metrics-00000-of-00001.tfrecord`,
`plots-...`, `attributions-...`, `validations.tfrecord`, `eval_config.json`,
so `tfma.load_eval_result`, the UI and the blessing read them unchanged.

`evaluate` returns False, having written nothing, for anything else (a
baseline model, other metrics or metric arguments, example weights,
confidence intervals, cross slices, slicing on transformed features,
TFRecord examples, a model that does not take serialized tf.Examples, ...):
the caller then runs TFMA. TensorFlow and TFMA are imported inside functions:
this module is imported by the executor only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from conveyor import fs
from conveyor.artifacts import Examples

__all__ = ["SUPPORTED_METRICS", "evaluate", "unsupported_reason"]

# The confusion-matrix metrics computed here, at TFMA's default threshold (0.5).
_CONFUSION_METRICS = (
    "BinaryAccuracy",
    "Precision",
    "Recall",
    "TruePositives",
    "FalsePositives",
    "TrueNegatives",
    "FalseNegatives",
)
SUPPORTED_METRICS = ("ExampleCount", *_CONFUSION_METRICS)
_THRESHOLD = 0.5  # TFMA's ConfusionMatrixMetric default (thresholds=None, top_k=None)
# Rows per model call. The model's intermediate tensors grow with it (the
# taxi model's one-hot layers: ~55 MB per 1,000 rows, 890 MB at 16,384);
# 4,096 keeps that near 250 MB for ~8% more time than 16,384.
_BATCH_ROWS = 4096
_DATA_LOCATION = "<user provided PCollection>"  # what TFMA writes for a PCollection input
_FILE_FORMAT = "<unknown>"


def unsupported_reason(eval_config: Any, *, file_format: str) -> str | None:
    """Why this configuration needs TFMA's own path (None: the batch path can
    compute it). `eval_config` is TFMA's, after its defaults were applied."""
    from conveyor.components import examples_io

    if file_format != examples_io.PARQUET:
        return f"examples in {file_format}"
    if len(eval_config.model_specs) != 1:
        return "more than one model (a baseline)"
    spec = eval_config.model_specs[0]
    if spec.is_baseline or not spec.label_key or spec.label_keys or spec.prediction_keys:
        return "model spec labels/predictions"
    if spec.example_weight_key or spec.example_weight_keys or spec.model_type:
        return "model spec weights or type"
    if spec.HasField("padding_options"):
        return "padding options"
    if eval_config.cross_slicing_specs:
        return "cross slicing"
    options = eval_config.options
    if options.compute_confidence_intervals.value or options.min_slice_size.value > 1:
        return "confidence intervals or min_slice_size"
    if options.disabled_outputs.values:
        return "disabled outputs"
    for slicing in eval_config.slicing_specs:
        if slicing.slice_keys_sql:
            return "SQL slices"
    for metrics_spec in eval_config.metrics_specs:
        if metrics_spec.output_names or metrics_spec.query_key or metrics_spec.HasField("binarize"):
            return "metrics spec outputs/query/binarize"
        if metrics_spec.HasField("aggregate") or metrics_spec.HasField("example_weights"):
            return "metrics spec aggregation or example weights"
        if list(metrics_spec.model_names) not in ([], [spec.name]):
            return "metrics spec model names"
        if metrics_spec.thresholds or metrics_spec.per_slice_thresholds or metrics_spec.cross_slice_thresholds:
            return "thresholds by metric name"
        for metric in metrics_spec.metrics:
            if metric.class_name not in SUPPORTED_METRICS:
                return f"metric {metric.class_name}"
            if metric.module not in ("", "tensorflow_model_analysis.metrics"):
                return f"metric module {metric.module}"
            if metric.config.strip() not in ("", "{}"):
                return f"metric {metric.class_name} with arguments"
            if metric.cross_slice_thresholds:
                return "cross-slice thresholds"
    return None


def evaluate(
    *,
    eval_config: Any,
    examples: Examples,
    splits: list[str],
    model_path: str,
    output_path: str,
    rubber_stamp: bool,
) -> bool:
    """Evaluates like `tfma.ExtractEvaluateAndWriteResults` and writes its
    files to `output_path`; False (nothing written) when the configuration or
    the model is one this path does not handle."""
    from conveyor.components import examples_io

    if unsupported_reason(eval_config, file_format=examples_io.file_format(examples)) is not None:
        return False
    plan = _Plan.make(eval_config)
    if plan is None:
        return False
    options = eval_config.options
    include_default = (
        options.include_default_metrics.value if options.HasField("include_default_metrics") else True
    )
    model = _Model.load(model_path, eval_config.model_specs[0], eval_config, include_default)
    if model is None or set(plan.slice_features) & model.transformed_keys:
        # TFMA slices on a transformed feature first when one has the name.
        return False
    groups = _Groups(plan.slice_features)
    for split in splits:
        for path in examples_io.split_files(examples, split):
            for batch in _read_batches(path):
                if not groups.add(batch, model, plan):
                    return False
    sliced = groups.sliced_metrics(plan, model)
    _write(output_path, eval_config, sliced, model_path, rubber_stamp)
    return True


class _Plan:
    """The metric keys TFMA would output and what each is computed from."""

    def __init__(self, slice_specs: list[Any], slice_features: list[str],
                 metrics: list[tuple[Any, str, Any]]) -> None:
        self.slice_specs = slice_specs
        self.slice_features = slice_features
        self.metrics = metrics  # (MetricKey, "count" | "confusion", tfma metric or None)

    @classmethod
    def make(cls, eval_config: Any) -> _Plan | None:
        import tensorflow_model_analysis as tfma
        from tensorflow_model_analysis.metrics import metric_specs, metric_types
        from tensorflow_model_analysis.slicer import slicer_lib

        model_name = eval_config.model_specs[0].name
        # The keys TFMA computes for these specs, from TFMA itself.
        expected = set()
        for computation in metric_specs.to_computations(list(eval_config.metrics_specs), eval_config=eval_config):
            for key in computation.keys:
                if isinstance(key, metric_types.MetricKey) and not key.name.startswith("_"):
                    expected.add(key)
                elif not isinstance(key, metric_types.MetricKey):
                    return None  # a plot or attribution: not computed here
        metrics: list[tuple[Any, str, Any]] = []
        for metrics_spec in eval_config.metrics_specs:
            for config in metrics_spec.metrics:
                metric = getattr(tfma.metrics, config.class_name)()
                key = metric_types.MetricKey(name=metric.name, model_name=model_name, example_weighted=False)
                kind = "count" if config.class_name == "ExampleCount" else "confusion"
                metrics.append((key, kind, metric))
        if {key for key, _, _ in metrics} != expected:
            return None
        slice_specs = [slicer_lib.SingleSliceSpec(spec=s) for s in eval_config.slicing_specs] or [
            slicer_lib.SingleSliceSpec()
        ]
        features: list[str] = []
        for spec in eval_config.slicing_specs:
            for name in list(spec.feature_keys) + list(spec.feature_values):
                if name not in features:
                    features.append(name)
        return cls(slice_specs, features, metrics)


class _Model:
    """The model's prediction and preprocessing signatures, loaded once."""

    def __init__(self, module: Any, serving: Any, input_name: str, preprocessing: list[Any],
                 label_key: str, prediction_key: str) -> None:
        self.module = module  # Keeps the loaded variables alive.
        self.serving = serving
        self.input_name = input_name
        self.preprocessing = preprocessing
        self.label_key = label_key
        self.prediction_key = prediction_key
        # The model's compiled metrics and loss, which TFMA adds for a Keras
        # model (keras_util.metric_computations_using_keras_saved_model):
        # their MetricKeys and the Keras metric objects, in the same order.
        self.keras_keys: list[Any] = []
        self.keras_metrics: list[Any] = []
        self.transformed_keys: set[str] = set()
        for function in preprocessing:
            outputs = function.structured_outputs
            self.transformed_keys |= set(outputs) if isinstance(outputs, dict) else set()

    @classmethod
    def load(cls, path: str, spec: Any, eval_config: Any, include_default: bool) -> _Model | None:
        import tensorflow as tf
        from tensorflow_model_analysis import constants
        from tensorflow_model_analysis.api import types
        from tensorflow_model_analysis.evaluators import keras_util

        # TFMA's model_util.get_model_type: a Keras model when Keras loads it as one.
        keras_model = None
        if not spec.model_type:
            try:
                keras_model = tf.keras.models.load_model(path)
            except Exception:  # noqa: BLE001 -- as TFMA: not loadable by Keras means a generic model
                keras_model = None
            if not isinstance(keras_model, tf.keras.models.Model):
                keras_model = None
        elif spec.model_type != constants.TF_GENERIC:
            return None
        module = keras_model if keras_model is not None else tf.saved_model.load(path)
        keras_keys: list[Any] = []
        keras_metrics: list[Any] = []
        if keras_model is not None and include_default:
            loader = types.ModelLoader(construct_fn=lambda: keras_model)
            computations = keras_util.metric_computations_using_keras_saved_model(
                spec.name, loader, eval_config
            )
            for computation in computations:
                if type(computation.combiner).__name__ != "_KerasCompiledMetricsCombiner":
                    return None  # model.evaluate-based metrics: TFMA's path
                keras_keys.extend(computation.keys)
            if keras_keys:
                keras_metrics = list(keras_model.compiled_metrics.metrics) + list(
                    keras_model.compiled_loss.metrics
                )
                if len(keras_metrics) != len(keras_keys) or len(getattr(keras_model, "output_names", []) or []) > 1:
                    return None
        signatures = module.signatures
        serving_name = spec.signature_name or "serving_default"
        if serving_name not in signatures:
            return None
        functions = [signatures[serving_name]]
        preprocessing = []
        for name in spec.preprocessing_function_names:
            if name not in signatures:
                return None
            preprocessing.append(signatures[name])
            functions.append(signatures[name])
        input_name = ""
        for function in functions:
            _, inputs = function.structured_input_signature
            if len(inputs) != 1:
                return None
            (name, tensor_spec), = inputs.items()
            if tensor_spec.dtype != tf.string or tensor_spec.shape.rank != 1:
                return None
            if function is functions[0]:
                input_name = name
            elif name != input_name:
                return None
        outputs = functions[0].structured_outputs
        prediction_key = spec.prediction_key
        if isinstance(outputs, dict):
            if not prediction_key:
                if len(outputs) != 1:
                    return None
                (prediction_key,) = outputs
            elif prediction_key not in outputs:
                return None
        elif prediction_key:
            return None
        model = cls(module, functions[0], input_name, preprocessing, spec.label_key, prediction_key)
        model.keras_keys, model.keras_metrics = keras_keys, keras_metrics
        return model

    def keras_weights(self, label: Any, prediction: Any) -> list[list[Any]]:
        """The compiled metrics' (and loss's) state after these examples, one
        list of weights per metric: what TFMA's Keras combiner sums."""
        import numpy as np
        import tensorflow as tf

        keras_model = self.module
        for metric in self.keras_metrics:
            metric.reset_state()
        if len(label):
            labels = tf.convert_to_tensor(label.reshape(-1, 1))
            predictions = tf.convert_to_tensor(np.asarray(prediction).reshape(-1, 1))
            weights = tf.ones_like(predictions)
            keras_model.compiled_metrics.update_state(labels, predictions, sample_weight=weights)
            keras_model.compiled_loss(labels, predictions, sample_weight=weights)
        return [metric.get_weights() for metric in self.keras_metrics]

    def keras_results(self, weights: list[list[Any]]) -> dict[Any, Any]:
        results = {}
        for key, metric, state in zip(self.keras_keys, self.keras_metrics, weights, strict=True):
            metric.set_weights(state)
            results[key] = metric.result().numpy()
        return results

    def __call__(self, serialized: list[bytes], raw: Any) -> tuple[Any, Any] | None:
        """(labels, predictions) as flat float arrays, or None when their
        shapes are not one value per example."""
        import numpy as np
        import tensorflow as tf

        examples = tf.constant(serialized)
        label = None
        for function in self.preprocessing:
            transformed = function(**{self.input_name: examples})
            if self.label_key in transformed:
                label = transformed[self.label_key].numpy()
        if label is None:
            if self.label_key not in raw.schema.names:
                return None
            column = raw.column(self.label_key)
            if column.null_count:
                return None
            label = column.to_numpy(zero_copy_only=False)
        outputs = self.serving(**{self.input_name: examples})
        prediction = outputs[self.prediction_key] if self.prediction_key else outputs
        prediction = np.asarray(prediction.numpy())
        n = len(serialized)
        label = np.asarray(label)
        if label.size != n or prediction.size != n:
            return None
        return label.reshape(n).astype(np.float64), prediction.reshape(n)


class _Groups:
    """Rows grouped by the values of the slicing features; per group the
    sums every supported metric is computed from."""

    def __init__(self, features: list[str]) -> None:
        self.features = features
        self.ids: dict[tuple[Any, ...], int] = {}
        self.values: list[tuple[Any, ...]] = []
        self.sums: dict[str, Any] = {}
        # Per batch (labels, predictions, group ids), kept when the model has
        # compiled Keras metrics (computed per group at the end).
        self.rows: list[tuple[Any, Any, Any]] = []

    def add(self, batch: Any, model: _Model, plan: _Plan) -> bool:
        import numpy as np

        from conveyor.components import examples_io

        serialized = examples_io.encode_examples(batch)
        called = model(serialized, batch)
        if called is None:
            return False
        label, prediction = called
        if np.isnan(label).any() or (label < 0).any() or (label > 1).any():
            return False  # TFMA's own path reports (or handles) such labels.
        group = self._group_ids(batch)
        if group is None:
            return False
        if model.keras_metrics:
            self.rows.append((label, prediction, group))
        positive = prediction > _THRESHOLD
        n_groups = len(self.values)
        stats = {
            "count": np.ones_like(label),
            "tp": label * positive,
            "fp": (1.0 - label) * positive,
            "fn": label * ~positive,
            "tn": (1.0 - label) * ~positive,
        }
        for name, weights in stats.items():
            sums = np.bincount(group, weights=weights, minlength=n_groups)
            previous = self.sums.get(name)
            if previous is not None:
                sums[: len(previous)] += previous
            self.sums[name] = sums
        return True

    def _group_ids(self, batch: Any) -> Any:
        """Each row's group id; None when a slicing feature is missing from
        the examples or holds more than one value in a row."""
        import numpy as np
        import pyarrow as pa

        from conveyor.components import examples_io

        n = batch.num_rows
        if not self.features:
            if not self.values:
                self.ids[()] = 0
                self.values.append(())
            return np.zeros(n, dtype=np.int64)
        names = batch.schema.names
        if any(f not in names for f in self.features):
            return None
        selected = pa.RecordBatch.from_arrays([batch.column(f) for f in self.features], self.features)
        lists = examples_io.as_list_batch(selected)
        codes = []
        dictionaries = []
        for name in self.features:
            column = lists.column(name)
            lengths = np.diff(column.offsets.to_numpy())
            if (lengths > 1).any():
                return None
            encoded = column.flatten().dictionary_encode()
            code = np.full(n, -1, dtype=np.int64)
            code[lengths == 1] = encoded.indices.to_numpy(zero_copy_only=False)
            codes.append(code)
            dictionary = encoded.dictionary
            if pa.types.is_large_binary(dictionary.type) or pa.types.is_binary(dictionary.type):
                dictionaries.append((np.array(dictionary.to_pylist(), dtype=object), dictionary.type))
            else:
                dictionaries.append((dictionary.to_numpy(zero_copy_only=False), dictionary.type))
        unique, inverse = np.unique(np.stack(codes, axis=1), axis=0, return_inverse=True)
        local = np.empty(len(unique), dtype=np.int64)
        for i, row in enumerate(unique):
            values = tuple(
                dictionaries[j][0][c : c + 1] if c >= 0 else dictionaries[j][0][:0]
                for j, c in enumerate(row)
            )
            key = tuple(tuple(v.tolist()) for v in values)
            if key not in self.ids:
                self.ids[key] = len(self.values)
                self.values.append(values)
            local[i] = self.ids[key]
        return local[inverse.reshape(-1)]

    def sliced_metrics(self, plan: _Plan, model: _Model) -> dict[Any, dict[Any, Any]]:
        """{slice key: {MetricKey: value}}, the slice keys TFMA's slicer makes
        of each group's feature values."""
        import numpy as np
        from tensorflow_model_analysis.slicer import slicer_lib

        keras_states: list[list[list[Any]]] = []
        if model.keras_metrics and self.rows:
            label = np.concatenate([r[0] for r in self.rows])
            prediction = np.concatenate([r[1] for r in self.rows])
            group_ids = np.concatenate([r[2] for r in self.rows])
            order = np.argsort(group_ids, kind="stable")
            bounds = np.searchsorted(group_ids[order], np.arange(len(self.values) + 1))
            for g in range(len(self.values)):
                rows = order[bounds[g] : bounds[g + 1]]
                keras_states.append(model.keras_weights(label[rows], prediction[rows]))

        members: dict[Any, list[int]] = {}
        for group, values in enumerate(self.values):
            features = dict(zip(self.features, values, strict=True))
            for slice_key in set(slicer_lib.get_slices_for_features_dicts([], features, plan.slice_specs)):
                members.setdefault(slice_key, []).append(group)
        result: dict[Any, dict[Any, Any]] = {}
        for slice_key, groups in members.items():
            index = np.array(groups, dtype=np.int64)
            total = {name: float(sums[index].sum()) for name, sums in self.sums.items()}
            metrics = {}
            if keras_states:
                # Summed over the groups, as TFMA's combiner sums them over batches.
                summed = [
                    [np.sum([keras_states[g][m][w] for g in groups], axis=0)
                     for w in range(len(keras_states[groups[0]][m]))]
                    for m in range(len(model.keras_metrics))
                ]
                metrics.update(model.keras_results(summed))
            for key, kind, metric in plan.metrics:
                if kind == "count":
                    metrics[key] = total["count"]
                else:
                    metrics[key] = metric.result(total["tp"], total["tn"], total["fp"], total["fn"])
            result[slice_key] = metrics
        return result


def _read_batches(path: str) -> Iterator[Any]:
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=_BATCH_ROWS):
            if batch.num_rows:
                yield batch


def _write(output_path: str, eval_config: Any, sliced: dict[Any, dict[Any, Any]], model_path: str,
           rubber_stamp: bool) -> None:
    """TFMA's output files, written as its writers write them."""
    from tensorflow_model_analysis.evaluators import metrics_validator
    from tensorflow_model_analysis.writers import eval_config_writer
    from tensorflow_model_analysis.writers import metrics_plots_and_validations_writer as writer

    from conveyor.components import examples_io

    metrics, plots, attributions = [], [], []
    combine = writer.CombineValidations(eval_config, rubber_stamp=rubber_stamp)
    validation = combine.create_accumulator()
    for slice_key, values in sliced.items():
        metrics.append(writer.convert_slice_metrics_to_proto((slice_key, values), []).SerializeToString())
        plots.append(writer.convert_slice_plots_to_proto((slice_key, {}), []).SerializeToString())
        attributions.append(writer.convert_slice_attributions_to_proto((slice_key, {})).SerializeToString())
        validation = combine.add_input(validation, metrics_validator.validate_metrics((slice_key, values),
                                                                                      eval_config))
    validation = combine.extract_output(validation)
    shard = "-00000-of-00001.tfrecord"
    fs.write_bytes(fs.join(output_path, "metrics" + shard), examples_io.frame_tfrecords(metrics))
    fs.write_bytes(fs.join(output_path, "plots" + shard), examples_io.frame_tfrecords(plots))
    fs.write_bytes(fs.join(output_path, "attributions" + shard), examples_io.frame_tfrecords(attributions))
    fs.write_bytes(fs.join(output_path, "validations.tfrecord"),
                   examples_io.frame_tfrecords([validation.SerializeToString()]))
    run = eval_config_writer._serialize_eval_run(  # noqa: SLF001 -- TFMA's own JSON of the run
        eval_config, _DATA_LOCATION, _FILE_FORMAT, {eval_config.model_specs[0].name: model_path}
    )
    json.loads(run)  # It is JSON; written as TFMA's WriteToText writes it (one line per record).
    fs.write_text(fs.join(output_path, eval_config_writer.EVAL_CONFIG_FILE + ".json"), run + "\n")
