"""`conveyor report RUN -o report.html`: one run as one self-contained HTML
file (timings, the DAG, statistics, schema, anomalies, evaluation, the
blessing, and the lineage of what the run pushed) that opens offline: the
stylesheet and every chart are inline, and links only point inside it."""

from __future__ import annotations

import html
import time
from collections.abc import Sequence

from conveyor import fs, lineage
from conveyor.ui import render
from conveyor.ui.server import latest_per_node, lineage_graph, page, run_graph, source_detail

__all__ = ["report", "write_report", "SHOWN_TYPES"]

# The artifacts whose content a report shows, in this order; others are listed.
SHOWN_TYPES = ("ExampleStatistics", "Schema", "ExampleAnomalies", "ModelEvaluation", "ModelBlessing", "PushedModel")


def report(store: str | lineage.Store, run_id: str = "latest", pipeline: str | None = None) -> str:
    """The report of one run (a run id or shortcut, counted among
    `pipeline`'s runs when given) as an HTML document."""
    store = lineage.open_store(store)
    r = lineage.run(store, run_id, pipeline)
    nodes = latest_per_node(r.nodes)
    ids = sorted({a for n in nodes for key_ids in n.outputs.values() for a in key_ids})
    found = {a.id: a for a in lineage.artifacts(store, ids)}
    timings = "".join(
        f'<tr class="{n.state.lower()}"><td>{html.escape(n.node)}</td><td>{n.state}</td>'
        f"<td>{n.seconds:.1f} s</td><td>{html.escape(n.rerun_reason or n.error or '')}</td></tr>"
        for n in sorted(nodes, key=lambda n: n.started)
    )
    sections = []
    for kind in SHOWN_TYPES:
        for a in (x for x in found.values() if x.type == kind):
            sections.append(
                f'<section id="artifact-{a.id}"><h2>{html.escape(a.type)} {a.id} '
                f"<small>({html.escape(_producer_node(nodes, a.id))})</small></h2>"
                f"<p><code>{html.escape(a.uri)}</code></p>"
                + render.render_artifact(a.type, a.local_path or a.uri, a.properties, {}, link=_anchor)
                + "</section>"
            )
    others = [a for a in found.values() if a.type not in SHOWN_TYPES]
    listed = "".join(
        f'<li id="artifact-{a.id}">{html.escape(a.type)} {a.id}: <code>{html.escape(a.uri)}</code>'
        f"{' (files gone)' if a.files == 'gone' else ''}</li>" for a in others
    )
    pushed = [a for a in found.values() if a.type == "PushedModel"]
    models = pushed or [a for a in found.values() if a.type == "Model"]
    lineage_part = ""
    if models:
        graph = lineage.provenance(store, models[0].id, "up")
        sources = sorted({s for s in (source_detail(e) for e in graph.sources()) if s})
        lineage_part = (
            f"<h2>Lineage of {html.escape(models[0].type)} {models[0].id}</h2>"
            + (f"<p>Source data: {', '.join(f'<code>{html.escape(s)}</code>' for s in sources)}</p>" if sources else "")
            + f'<div class="graph-box">{lineage_graph(graph, _in_report)}</div>'
        )
    body = (
        f"<p>Pipeline <b>{html.escape(r.pipeline)}</b> · state <b>{r.state}</b> · started "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(r.started))} · {r.seconds:.1f} s · "
        f"store <code>{html.escape(repr(store))}</code></p>"
        f'<div class="graph-box">{run_graph(r)}</div>'
        "<h2>Timings</h2><table id=timings><tr><th>node</th><th>state</th><th>duration</th>"
        f"<th>why it ran / error</th></tr>{timings}</table>"
        + "".join(sections)
        + lineage_part
        + (f"<h2>Other artifacts</h2><ul>{listed}</ul>" if listed else "")
    )
    # Links inside a file only: the site's navigation has nowhere to go.
    return page(f"Run {r.run_id}", body, nav="<b>Conveyor report</b>")


def write_report(store: str | lineage.Store, run_id: str, path: str, pipeline: str | None = None) -> str:
    """Writes the report (through the filesystem layer: `path` may be on an
    object store) and returns the path."""
    fs.write_text(path, report(store, run_id, pipeline))
    return path


def _anchor(artifact_id: int) -> str:
    return f"#artifact-{artifact_id}"


def _in_report(kind: str, ident: int) -> str:
    """Lineage boxes link to the artifacts the report shows; executions to nothing."""
    return _anchor(ident) if kind == "artifact" else ""


def _producer_node(nodes: Sequence[lineage.NodeRun], artifact_id: int) -> str:
    for n in nodes:
        if any(artifact_id in ids for ids in n.outputs.values()):
            return n.node
    return ""
