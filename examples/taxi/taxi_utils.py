"""Chicago taxi: will the tip be more than 20% of the fare?

The user module of the taxi example: `preprocessing_fn` for Transform and
`run_fn` for Trainer. The exported model takes serialized tf.Example rows of
RAW data (the Transform graph is inside it), as TFX's taxi model does.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras  # Keras 2: what tf.Transform's TransformFeaturesLayer is built on
from tfx_bsl.public import tfxio

# Dense floats, scaled to z-scores.
DENSE_FLOAT_FEATURE_KEYS = ["trip_miles", "fare", "trip_seconds"]
# Coordinates, bucketized into quantiles.
BUCKET_FEATURE_KEYS = ["pickup_latitude", "pickup_longitude", "dropoff_latitude", "dropoff_longitude"]
FEATURE_BUCKET_COUNT = 10
# Categorical values (strings or ids) mapped to integers by a vocabulary.
VOCAB_FEATURE_KEYS = [
    "payment_type",
    "company",
    "pickup_census_tract",
    "dropoff_census_tract",
    "pickup_community_area",
    "dropoff_community_area",
]
VOCAB_SIZE = 1000
OOV_SIZE = 10
# Small integers used as they are: name -> number of values.
CATEGORICAL_FEATURE_KEYS = {"trip_start_hour": 24, "trip_start_day": 8, "trip_start_month": 13}

LABEL_KEY = "tips"
FARE_KEY = "fare"
BATCH_SIZE = 64


def transformed_name(key: str) -> str:
    return key + "_xf"


def _dense(x: Any, default: Any) -> tf.Tensor:
    """A feature as a dense [batch] tensor, missing values replaced by
    `default`. The schema makes features that are sometimes missing sparse
    ([batch, 0 or 1]); features always present come as [batch, 1]."""
    if isinstance(x, tf.sparse.SparseTensor):
        x = tf.sparse.to_dense(
            tf.SparseTensor(x.indices, x.values, [x.dense_shape[0], 1]), default_value=default
        )
    if x.shape.rank == 2:
        x = tf.squeeze(x, axis=1)
    return x


def preprocessing_fn(inputs: dict[str, Any]) -> dict[str, tf.Tensor]:
    """tf.Transform's callback: raw features -> model features."""
    outputs = {}
    for key in DENSE_FLOAT_FEATURE_KEYS:
        value = tf.cast(_dense(inputs[key], 0), tf.float32)
        outputs[transformed_name(key)] = tft.scale_to_z_score(value)
    for key in BUCKET_FEATURE_KEYS:
        outputs[transformed_name(key)] = tft.bucketize(
            tf.cast(_dense(inputs[key], 0), tf.float32), FEATURE_BUCKET_COUNT
        )
    for key in VOCAB_FEATURE_KEYS:
        value = _dense(inputs[key], "" if inputs[key].dtype == tf.string else -1)
        if value.dtype != tf.string:
            value = tf.strings.as_string(value)
        outputs[transformed_name(key)] = tft.compute_and_apply_vocabulary(
            value, top_k=VOCAB_SIZE, num_oov_buckets=OOV_SIZE, vocab_filename=key
        )
    for key, size in CATEGORICAL_FEATURE_KEYS.items():
        outputs[transformed_name(key)] = tf.clip_by_value(
            tf.cast(_dense(inputs[key], 0), tf.int64), 0, size - 1
        )
    # The label: was the tip more than 20% of the fare? A trip without a fare
    # counts as no.
    fare = tf.cast(_dense(inputs[FARE_KEY], float("nan")), tf.float32)
    tips = tf.cast(_dense(inputs[LABEL_KEY], float("nan")), tf.float32)
    outputs[transformed_name(LABEL_KEY)] = tf.where(
        tf.math.is_nan(fare) | tf.math.is_nan(tips),
        tf.zeros_like(fare, dtype=tf.int64),
        tf.cast(tips > fare * 0.2, tf.int64),
    )
    return outputs


# -- training -------------------------------------------------------------------


def _input_fn(file_pattern: Any, data_accessor: Any, tf_transform_output: Any,
              batch_size: int) -> tf.data.Dataset:
    return data_accessor.tf_dataset_factory(
        file_pattern,
        tfxio.TensorFlowDatasetOptions(batch_size=batch_size, label_key=transformed_name(LABEL_KEY)),
        tf_transform_output.transformed_metadata.schema,
    ).repeat()


def _build_keras_model(hidden_units: list[int], learning_rate: float) -> keras.Model:
    """A wide & deep classifier: one-hot categoricals (wide) next to a DNN
    over the scaled floats and embeddings of the categoricals (deep)."""
    inputs: dict[str, Any] = {}
    deep = []
    wide = []
    for key in DENSE_FLOAT_FEATURE_KEYS:
        name = transformed_name(key)
        inputs[name] = keras.layers.Input(shape=(1,), name=name, dtype=tf.float32)
        deep.append(inputs[name])
    sizes = {key: FEATURE_BUCKET_COUNT + 1 for key in BUCKET_FEATURE_KEYS}
    sizes.update({key: VOCAB_SIZE + OOV_SIZE for key in VOCAB_FEATURE_KEYS})
    sizes.update(CATEGORICAL_FEATURE_KEYS)
    for key, size in sizes.items():
        name = transformed_name(key)
        inputs[name] = keras.layers.Input(shape=(1,), name=name, dtype=tf.int64)
        wide.append(keras.layers.CategoryEncoding(num_tokens=size, output_mode="one_hot")(inputs[name]))
        embedded = keras.layers.Embedding(size, min(8, size))(inputs[name])
        deep.append(keras.layers.Flatten()(embedded))
    x = keras.layers.concatenate(deep)
    for units in hidden_units:
        x = keras.layers.Dense(units, activation="relu")(x)
    combined = keras.layers.concatenate([x, keras.layers.concatenate(wide)])
    output = keras.layers.Dense(1, activation="sigmoid")(combined)
    model = keras.Model(inputs=inputs, outputs=output)
    model.compile(
        loss="binary_crossentropy",
        optimizer=keras.optimizers.Adam(learning_rate),
        # As TFX's taxi model: the Evaluator computes compiled metrics on every
        # slice, and AUC there is costly; add it in the EvalConfig if wanted.
        metrics=[keras.metrics.BinaryAccuracy()],
    )
    return model


def _serving_signature(model: keras.Model, tf_transform_output: Any) -> Any:
    """serving_default: serialized tf.Example rows WITHOUT the label ->
    {'outputs': probability that the tip is > 20%}."""
    model.tft_layer = tf_transform_output.transform_features_layer()

    @tf.function(input_signature=[tf.TensorSpec(shape=[None], dtype=tf.string, name="examples")])
    def serve_tf_examples_fn(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        feature_spec = tf_transform_output.raw_feature_spec()
        feature_spec.pop(LABEL_KEY)
        raw_features = tf.io.parse_example(serialized, feature_spec)
        transformed = model.tft_layer(raw_features)
        return {"outputs": model(transformed)}

    return serve_tf_examples_fn


def _transform_features_signature(model: keras.Model, tf_transform_output: Any) -> Any:
    """transform_features: serialized raw tf.Example rows -> transformed
    features, the label included (TFMA's preprocessing function)."""
    model.tft_layer_eval = tf_transform_output.transform_features_layer()

    @tf.function(input_signature=[tf.TensorSpec(shape=[None], dtype=tf.string, name="examples")])
    def transform_features_fn(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        raw_features = tf.io.parse_example(serialized, tf_transform_output.raw_feature_spec())
        return model.tft_layer_eval(raw_features)

    return transform_features_fn


def run_fn(fn_args: Any) -> None:
    """Trainer's callback: train on the transformed examples and export a
    SavedModel to fn_args.serving_model_dir."""
    hp = dict(fn_args.hyperparameters or {})
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    batch_size = int(hp.get("batch_size", BATCH_SIZE))
    train_dataset = _input_fn(fn_args.train_files, fn_args.data_accessor, tf_transform_output, batch_size)
    eval_dataset = _input_fn(fn_args.eval_files, fn_args.data_accessor, tf_transform_output, batch_size)

    model = _build_keras_model(
        hidden_units=list(hp.get("hidden_units", [64, 32])),
        learning_rate=float(hp.get("learning_rate", 0.003)),
    )
    tensorboard = keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir, update_freq="epoch")
    model.fit(
        train_dataset,
        steps_per_epoch=fn_args.train_steps,
        validation_data=eval_dataset,
        validation_steps=fn_args.eval_steps,
        callbacks=[tensorboard],
        verbose=2,
    )
    signatures = {
        "serving_default": _serving_signature(model, tf_transform_output),
        "transform_features": _transform_features_signature(model, tf_transform_output),
    }
    model.save(fn_args.serving_model_dir, save_format="tf", signatures=signatures)
