"""Trainer: runs the user's `run_fn(fn_args)` to train and export a model.

The user's code does the training (Keras, usually); Conveyor gives it the
data files, the Transform graph, the schema and where to save, through
`FnArgs` (`conveyor.components.fn_args`), and checks a SavedModel came out.
"""

from __future__ import annotations

import dataclasses

from conveyor import fs
from conveyor.artifacts import Artifact, Examples, Model, ModelRun, Schema, TransformGraph
from conveyor.components.base import ExecutionContext, load_user_function, skip_autograph_for_libraries
from conveyor.errors import PipelineDefinitionError
from conveyor.pipeline.dsl import Component, Input

__all__ = ["Trainer", "TrainerParams", "TrainArgs", "EvalArgs", "SERVING_MODEL_DIR", "run"]

# The sub-directory of a Model artifact holding the SavedModel (TFX's name).
SERVING_MODEL_DIR = "Format-Serving"


@dataclasses.dataclass(frozen=True)
class TrainArgs:
    """Training steps (None: until the data ends) and the splits trained on."""

    num_steps: int | None = None
    splits: list[str] = dataclasses.field(default_factory=lambda: ["train"])


@dataclasses.dataclass(frozen=True)
class EvalArgs:
    """Evaluation steps during training (None: until the data ends) and the splits used."""

    num_steps: int | None = None
    splits: list[str] = dataclasses.field(default_factory=lambda: ["eval"])


@dataclasses.dataclass(frozen=True)
class TrainerParams:
    # A Python file defining `run_fn`, or an import path 'package.module.run_fn':
    # give exactly one.
    module_file: str | None = None
    run_fn: str | None = None
    train_args: TrainArgs = dataclasses.field(default_factory=TrainArgs)
    eval_args: EvalArgs = dataclasses.field(default_factory=EvalArgs)
    custom_config: dict = dataclasses.field(default_factory=dict)
    hyperparameters: dict = dataclasses.field(default_factory=dict)


class Trainer(Component):
    """Calls the user's `run_fn(fn_args)` (TFX's generic Trainer contract) on
    `examples` (raw or transformed), with the optional Transform graph, schema
    and base model. `model` holds the SavedModel run_fn saved in
    `fn_args.serving_model_dir` (`<uri>/Format-Serving`); `model_run` holds its
    logs (`fn_args.model_run_dir`)."""

    INPUTS = {
        "examples": Input(Examples),
        "transform_graph": Input(TransformGraph, optional=True),
        "schema": Input(Schema, optional=True),
        "base_model": Input(Model, optional=True),
    }
    OUTPUTS = {"model": Model, "model_run": ModelRun}
    Params = TrainerParams
    EXECUTOR = "conveyor.components.trainer:run"
    # What a run_fn written for TFX imports; the DataAccessor reads with tfx_bsl.
    EXECUTOR_IMPORTS = ("tensorflow_transform", "tf_keras", "tfx_bsl.public.tfxio")
    CODE_PARAMS = ("module_file",)
    IMPORT_PATH_PARAMS = ("run_fn",)

    def check(self) -> None:
        p = self.params
        self._require_user_code("run_fn")
        for name, args in (("train_args", p.train_args), ("eval_args", p.eval_args)):
            if args.num_steps is not None and args.num_steps <= 0:
                raise PipelineDefinitionError(
                    f"{self._where()} {name}.num_steps must be positive (or None), got {args.num_steps}."
                )
            if not args.splits:
                raise PipelineDefinitionError(f"{self._where()} {name}.splits is empty.")


def run(
    inputs: dict[str, list[Artifact]],
    outputs: dict[str, list[Artifact]],
    params: TrainerParams,
    ctx: ExecutionContext,
) -> None:
    from conveyor.components import examples_io
    from conveyor.components.fn_args import DataAccessor, FnArgs

    examples_list: list[Examples] = inputs["examples"]  # type: ignore[assignment]
    formats = {examples_io.file_format(e) for e in examples_list}
    if len(formats) != 1:
        raise ctx.error(f"examples come in several file formats {sorted(formats)}; give one kind.")
    file_format = formats.pop()
    if file_format not in (examples_io.PARQUET, examples_io.TFRECORDS_GZIP):
        raise ctx.error(f"examples have file_format {file_format!r}, which the Trainer cannot read.")

    def files_of(splits: list[str], what: str) -> list[str]:
        patterns = []
        for examples in examples_list:
            for split in splits:
                if split not in examples.splits:
                    raise ctx.error(
                        f"{what}.splits names split {split!r} but examples {examples.uri} has splits "
                        f"{examples.splits}. Fix {what}.splits."
                    )
                if not examples_io.split_files(examples, split):
                    raise ctx.error(
                        f"examples {examples.uri} has no data files for split {split!r} "
                        f"(looked for {examples_io.file_pattern(examples, split)})."
                    )
                patterns.append(examples_io.file_pattern(examples, split))
        return patterns

    train_files = files_of(list(params.train_args.splits), "train_args")
    eval_files = files_of(list(params.eval_args.splits), "eval_args")

    schema_path = None
    if inputs.get("schema"):
        schema_path = fs.join(inputs["schema"][0].uri, "schema.pbtxt")
        if not fs.isfile(schema_path):
            raise ctx.error(f"schema artifact {inputs['schema'][0].uri} has no schema.pbtxt.")
    transform_output = None
    if inputs.get("transform_graph"):
        transform_output = inputs["transform_graph"][0].uri
        if not fs.isdir(fs.join(transform_output, "transform_fn")):
            raise ctx.error(
                f"transform_graph {transform_output} has no transform_fn/; connect Transform's "
                f"`transform_graph` output."
            )
    base_model = None
    if inputs.get("base_model"):
        base_model = fs.join(inputs["base_model"][0].uri, SERVING_MODEL_DIR)
        if not fs.isdir(base_model):
            raise ctx.error(f"base_model {inputs['base_model'][0].uri} has no {SERVING_MODEL_DIR}/.")

    run_fn = load_user_function(
        ctx.component_id, "run_fn", module_file=params.module_file, import_path=params.run_fn
    )

    model_uri = outputs["model"][0].uri
    serving_model_dir = fs.join(model_uri, SERVING_MODEL_DIR)
    model_run_dir = outputs["model_run"][0].uri
    fs.makedirs(model_run_dir)
    # The user's run_fn saves and reads through TensorFlow (tf.io.gfile).
    fs.enable_tensorflow([model_uri, *train_files])
    fn_args = FnArgs(
        train_files=train_files,
        eval_files=eval_files,
        train_steps=params.train_args.num_steps,
        eval_steps=params.eval_args.num_steps,
        schema_path=schema_path,
        schema_file=schema_path,
        transform_output=transform_output,
        transform_graph_path=transform_output,
        serving_model_dir=serving_model_dir,
        model_run_dir=model_run_dir,
        base_model=base_model,
        custom_config=dict(params.custom_config),
        hyperparameters=dict(params.hyperparameters),
        data_accessor=DataAccessor(file_format),
    )
    skip_autograph_for_libraries()
    run_fn(fn_args)

    if not fs.isfile(fs.join(serving_model_dir, "saved_model.pb")):
        where = params.module_file or params.run_fn
        raise ctx.error(
            f"run_fn from {where} returned without saving a model: there is no saved_model.pb in "
            f"fn_args.serving_model_dir ({serving_model_dir}). End run_fn with "
            f"model.save(fn_args.serving_model_dir, save_format='tf', signatures=...) or "
            f"tf.saved_model.save(model, fn_args.serving_model_dir)."
        )
