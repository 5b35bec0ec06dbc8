"""Palmer penguins: which of 3 species is this penguin?

The user module of the penguin example: `preprocessing_fn` for Transform and
`run_fn` for Trainer. The exported model takes serialized raw tf.Example rows
(the Transform graph is inside it).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras  # Keras 2: what tf.Transform's TransformFeaturesLayer is built on
from tfx_bsl.public import tfxio

FEATURE_KEYS = ["culmen_length_mm", "culmen_depth_mm", "flipper_length_mm", "body_mass_g"]
LABEL_KEY = "species"
NUM_CLASSES = 3
BATCH_SIZE = 20


def transformed_name(key: str) -> str:
    return key + "_xf"


def _dense(x: Any, default: Any) -> tf.Tensor:
    """A feature as a dense [batch] tensor, missing values set to `default`."""
    if isinstance(x, tf.sparse.SparseTensor):
        x = tf.sparse.to_dense(
            tf.SparseTensor(x.indices, x.values, [x.dense_shape[0], 1]), default_value=default
        )
    if x.shape.rank == 2:
        x = tf.squeeze(x, axis=1)
    return x


def preprocessing_fn(inputs: dict[str, Any]) -> dict[str, tf.Tensor]:
    """tf.Transform's callback: z-scored measurements and the species id."""
    outputs = {}
    for key in FEATURE_KEYS:
        outputs[transformed_name(key)] = tft.scale_to_z_score(tf.cast(_dense(inputs[key], 0), tf.float32))
    outputs[transformed_name(LABEL_KEY)] = tf.cast(_dense(inputs[LABEL_KEY], 0), tf.int64)
    return outputs


def _input_fn(file_pattern: Any, data_accessor: Any, tf_transform_output: Any,
              batch_size: int) -> tf.data.Dataset:
    return data_accessor.tf_dataset_factory(
        file_pattern,
        tfxio.TensorFlowDatasetOptions(batch_size=batch_size, label_key=transformed_name(LABEL_KEY)),
        tf_transform_output.transformed_metadata.schema,
    ).repeat()


def _build_keras_model(hidden_units: list[int], learning_rate: float) -> keras.Model:
    inputs = {
        transformed_name(key): keras.layers.Input(shape=(1,), name=transformed_name(key))
        for key in FEATURE_KEYS
    }
    x = keras.layers.concatenate(list(inputs.values()))
    for units in hidden_units:
        x = keras.layers.Dense(units, activation="relu")(x)
    output = keras.layers.Dense(NUM_CLASSES, activation="softmax")(x)
    model = keras.Model(inputs=inputs, outputs=output)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )
    return model


def _serving_signature(model: keras.Model, tf_transform_output: Any) -> Any:
    """serving_default: serialized tf.Example rows WITHOUT the label ->
    {'outputs': [batch, 3] class probabilities}."""
    model.tft_layer = tf_transform_output.transform_features_layer()

    @tf.function(input_signature=[tf.TensorSpec(shape=[None], dtype=tf.string, name="examples")])
    def serve_tf_examples_fn(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        feature_spec = tf_transform_output.raw_feature_spec()
        feature_spec.pop(LABEL_KEY)
        transformed = model.tft_layer(tf.io.parse_example(serialized, feature_spec))
        return {"outputs": model(transformed)}

    return serve_tf_examples_fn


def _transform_features_signature(model: keras.Model, tf_transform_output: Any) -> Any:
    """transform_features: serialized raw rows -> transformed features, label included."""
    model.tft_layer_eval = tf_transform_output.transform_features_layer()

    @tf.function(input_signature=[tf.TensorSpec(shape=[None], dtype=tf.string, name="examples")])
    def transform_features_fn(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        raw_features = tf.io.parse_example(serialized, tf_transform_output.raw_feature_spec())
        return model.tft_layer_eval(raw_features)

    return transform_features_fn


def run_fn(fn_args: Any) -> None:
    """Trainer's callback: train a small DNN and export it with its signatures."""
    hp = dict(fn_args.hyperparameters or {})
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    batch_size = int(hp.get("batch_size", BATCH_SIZE))
    train_dataset = _input_fn(fn_args.train_files, fn_args.data_accessor, tf_transform_output, batch_size)
    eval_dataset = _input_fn(fn_args.eval_files, fn_args.data_accessor, tf_transform_output, batch_size)
    model = _build_keras_model(
        hidden_units=list(hp.get("hidden_units", [8, 8])),
        learning_rate=float(hp.get("learning_rate", 0.01)),
    )
    model.fit(
        train_dataset,
        steps_per_epoch=fn_args.train_steps,
        validation_data=eval_dataset,
        validation_steps=fn_args.eval_steps,
        callbacks=[keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir, update_freq="epoch")],
        verbose=2,
    )
    signatures = {
        "serving_default": _serving_signature(model, tf_transform_output),
        "transform_features": _transform_features_signature(model, tf_transform_output),
    }
    model.save(fn_args.serving_model_dir, save_format="tf", signatures=signatures)
