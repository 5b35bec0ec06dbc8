"""Lineage: which data, schema, code and parameters produced an artifact.

Walks MLMD backwards from an artifact: the execution that produced it, that
execution's inputs, their producers, and so on down to ExampleGen, whose
`input_base` names the raw data.

Kept for code that uses these functions on a `Metadata`; the query API (runs,
provenance, consumers, served model, diff, why, logs on Conveyor and TFX
stores alike) and the `conveyor` query commands are `conveyor.lineage`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from conveyor.artifacts import Artifact
from conveyor.metadata.store import CACHE_KEY_PARTS, COMPONENT_ID, ERROR, RERUN_REASON, Metadata, _pb

__all__ = ["LineageStep", "upstream", "format_lineage", "run_history"]

_HIDDEN = {CACHE_KEY_PARTS, "__cache_key__", "__rerun_reason__"}


@dataclasses.dataclass
class LineageStep:
    """One execution on the way back from an artifact."""

    artifact: Artifact
    execution_id: int | None
    component_id: str = ""
    component_type: str = ""
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    code: dict[str, str] = dataclasses.field(default_factory=dict)
    inputs: dict[str, list[LineageStep]] = dataclasses.field(default_factory=dict)


def upstream(md: Metadata, artifact_id: int, _seen: dict[int, LineageStep] | None = None) -> LineageStep:
    """The lineage tree of an artifact (shared sub-trees are the same object)."""
    seen = {} if _seen is None else _seen
    if artifact_id in seen:
        return seen[artifact_id]
    [artifact] = md.artifacts_by_id([artifact_id])
    execution_id = md.producer_of(artifact_id)
    step = LineageStep(artifact, execution_id)
    seen[artifact_id] = step
    if execution_id is None:
        return step
    e = md.execution(execution_id)
    step.component_type = md.execution_type_name(e)
    props = md.properties_of(e)
    step.component_id = str(props.pop(COMPONENT_ID, ""))
    parts = json.loads(props.get(CACHE_KEY_PARTS) or "{}")
    step.code = {k.split(":", 1)[1]: v for k, v in parts.items() if k.startswith("code:")}
    step.parameters = {k: v for k, v in props.items() if k not in _HIDDEN and not k.startswith("__")}
    for key, arts in md.io_of(execution_id, "INPUT").items():
        step.inputs[key] = [upstream(md, a.id, seen) for a in arts if a.id is not None]
    return step


def format_lineage(step: LineageStep, indent: str = "", _shown: set[int] | None = None) -> str:
    """The lineage tree as indented text; an artifact reached twice (the
    examples feeding both StatisticsGen and Transform) is spelled out once."""
    shown = set() if _shown is None else _shown
    a = step.artifact
    lines = [f"{indent}{a.TYPE_NAME} #{a.id}  {a.uri}"]
    if a.id in shown and step.execution_id is not None:
        lines[0] += "  (see above)"
        return lines[0]
    shown.add(a.id)
    if step.execution_id is not None:
        lines.append(f"{indent}  <- {step.component_id} ({step.component_type.rsplit('.', 1)[-1]}), "
                     f"execution #{step.execution_id}")
        for k, v in sorted(step.parameters.items()):
            if v not in (None, "", "[]", "{}", "null"):
                lines.append(f"{indent}     {k} = {v}")
        for f, digest in sorted(step.code.items()):
            lines.append(f"{indent}     code {f} sha256:{digest[:12]}")
        for key, children in step.inputs.items():
            for child in children:
                lines.append(f"{indent}     [{key}]")
                lines.append(format_lineage(child, indent + "       ", shown))
    return "\n".join(lines)


def run_history(md: Metadata, pipeline_name: str, last: int = 5) -> str:
    """The last runs of a pipeline, newest first: each node's state, how long
    it took, why it re-ran and, for a failure, the first line of its error."""
    pb = _pb()
    runs = [
        c for c in md.store.get_contexts_by_type("pipeline_run")
        if c.properties["pipeline_name"].string_value == pipeline_name
    ]
    lines = []
    for run in sorted(runs, key=lambda c: c.create_time_since_epoch, reverse=True)[:last]:
        executions = sorted(md.executions(run.id), key=lambda e: e.id)
        lines.append(f"run {run.name}")
        for e in executions:
            props = e.custom_properties
            node = props[COMPONENT_ID].string_value if COMPONENT_ID in props else f"execution {e.id}"
            state = pb.Execution.State.Name(e.last_known_state)
            seconds = (e.last_update_time_since_epoch - e.create_time_since_epoch) / 1000
            line = f"  {node:<30} {state:<9} {seconds:7.1f}s  execution #{e.id}"
            if RERUN_REASON in props:
                line += f"  re-run: {md.text(props[RERUN_REASON])}"
            if ERROR in props:
                line += f"  error: {md.text(props[ERROR]).splitlines()[0]}"
            lines.append(line)
    return "\n".join(lines) if lines else f"no runs of pipeline {pipeline_name!r} recorded"
