"""Small function components for testing the DSL and the orchestrator
without TensorFlow."""

from __future__ import annotations

import os
import time

from conveyor.artifacts import Examples, Model, Schema
from conveyor.components.base import ExecutionContext
from conveyor.components.function import InputArtifact, OutputArtifact, Parameter, component
from conveyor.pipeline.dsl import Component


def _wait_for(done, what: str, timeout: float = 20.0) -> None:
    """Files, not threading objects: nodes may run in processes of their own."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f}s for {what}")
        time.sleep(0.02)


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
def meet(examples: InputArtifact[Examples], schema: OutputArtifact[Schema], tag: str = "",
         place: str = "") -> None:
    # Two nodes meet in the folder `place`: run one after the other, the first times out.
    open(os.path.join(place, tag), "w").close()
    _wait_for(lambda: len(os.listdir(place)) >= 2, f"a second node in {place}")
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


@component
def wait_for_release(rows: OutputArtifact[Examples], gate: str = "") -> None:
    # Says it started (`gate`.started), then waits until a test creates the file `gate`.
    open(gate + ".started", "w").close()
    _wait_for(lambda: os.path.exists(gate), gate, timeout=60)
    open(gate + ".released", "w").close()
    with open(os.path.join(rows.uri, "rows.txt"), "w") as f:
        f.write("row\n")
