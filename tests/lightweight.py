"""Small function components for testing the DSL and the orchestrator
without TensorFlow."""

from __future__ import annotations

import os
import threading

from conveyor.artifacts import Examples, Model, Schema
from conveyor.components.base import ExecutionContext
from conveyor.components.function import InputArtifact, OutputArtifact, Parameter, component
from conveyor.pipeline.dsl import Component

# Two nodes that must run at the same time meet at this barrier.
BARRIER = threading.Barrier(2, timeout=20)


@component
def make_rows(rows: OutputArtifact[Examples], n: Parameter[int] = 3) -> None:
    with open(os.path.join(rows.uri, "rows.txt"), "w") as f:
        f.write("row\n" * n)


@component
def count_rows(examples: InputArtifact[Examples], model: OutputArtifact[Model]) -> str:
    with open(os.path.join(examples.uri, "rows.txt")) as f:
        n = len(f.readlines())
    with open(os.path.join(model.uri, "count.txt"), "w") as f:
        f.write(str(n))
    return f"counted {n} rows"


@component
def meet(examples: InputArtifact[Examples], schema: OutputArtifact[Schema], tag: str = "") -> None:
    BARRIER.wait()
    with open(os.path.join(schema.uri, "schema.pbtxt"), "w") as f:
        f.write(tag)


@component
def explode(examples: InputArtifact[Examples], model: OutputArtifact[Model]) -> None:
    with open(os.path.join(model.uri, "partial.txt"), "w") as f:
        f.write("half-written")
    raise ValueError("bad rows in the input")


def _record_beam_options(inputs: dict, outputs: dict, params: object, ctx: ExecutionContext) -> str:
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

    options = PipelineOptions(ctx.beam_pipeline_args).view_as(DirectOptions)
    with open(os.path.join(outputs["model"][0].uri, "options.txt"), "w") as f:
        f.write(f"{options.direct_running_mode} {options.direct_num_workers}")
    return " ".join(ctx.beam_pipeline_args)


class BeamProbe(Component):
    """A Beam component that records the Beam options it was given."""

    OUTPUTS = {"model": Model}
    EXECUTOR = staticmethod(_record_beam_options)
    USES_BEAM = True


# Set by a test to let `wait_for_release` finish.
RELEASE = threading.Event()


@component
def wait_for_release(rows: OutputArtifact[Examples]) -> None:
    RELEASE.wait(timeout=20)
    with open(os.path.join(rows.uri, "rows.txt"), "w") as f:
        f.write("row\n")
