"""`conveyor ui`: a read-only web site over an MLMD store, Conveyor's or TFX's.

    conveyor ui --store PATH_OR_URI [--port 8080]

Pages (all server-rendered HTML with inline SVG; the only script polls a
run in progress):

    /                          runs, newest first
    /run/<run id>              the run's DAG, each node's state and duration
    /execution/<id>            parameters, user code, fingerprints, inputs, outputs, error
    /artifact/<id>             metadata, producer, consumers, and the artifact's content
                               (statistics, schema, anomalies, evaluation, blessing, ...)
    /lineage/<id>?direction=up|down   the lineage graph; every box links to its page
    /diff?a=<run>&b=<run>      what changed between two runs
    /files/<artifact id>/<path>       a file of an artifact
    /api/run/<run id>          the run as JSON (the DAG page polls it)

It binds to 127.0.0.1 only. Files are served only from inside an
artifact's own directory, itself inside the pipeline root it was written to
(`<root>/<node>/<key>/<execution>`): `..`, encoded slashes and symlinks
that lead out are refused.
"""

from __future__ import annotations

import html
import http.server
import json
import mimetypes
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from conveyor import fs, lineage
from conveyor.ui import graph, render

__all__ = ["Site", "serve", "make_server", "run_graph", "latest_per_node", "lineage_graph", "source_detail", "page"]

_MAX_FILE = 64 << 20  # a larger file is not served: the UI is for looking, not copying
_CONTENT_TYPES = ("ExampleStatistics", "Schema", "ExampleAnomalies", "ModelEvaluation", "ModelBlessing")
_POLL_MS = 2000
_RUNS_SHOWN = 200  # the runs page lists the newest runs; `conveyor runs --last N` goes further


class NotFound(Exception):
    """A page or file that is not there (404)."""


class Refused(Exception):
    """A request the site will not answer (400/403): a path that leads out."""


# ---------------------------------------------------------------------------
# Shared pieces: the page frame, the run DAG and the lineage graph (also used
# by conveyor.ui.report).
# ---------------------------------------------------------------------------


def page(title: str, body: str, *, script: str = "", nav: str = '<a href="/">Conveyor</a>') -> str:
    """A whole HTML page: the stylesheet inline, no external resource."""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)} · Conveyor</title><style>{render.render_css()}{_CSS}</style></head>"
        f'<body><nav>{nav}</nav><main><h1>{html.escape(title)}</h1>{body}</main>'
        + (f"<script>{script}</script>" if script else "")
        + "</body></html>"
    )


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else "-"


def run_graph(r: lineage.Run, href: Callable[[lineage.NodeRun], str] | None = None) -> str:
    """The run's DAG as SVG: a node per execution, an edge where one node's
    output artifact is another's input in this run."""
    made_by: dict[int, str] = {}
    for n in r.nodes:
        for ids in n.outputs.values():
            for a in ids:
                made_by.setdefault(a, n.node)
    edges = sorted({(made_by[a], n.node) for n in r.nodes for ids in n.inputs.values() for a in ids
                    if a in made_by and made_by[a] != n.node})
    nodes = [
        graph.GraphNode(
            id=n.node, label=n.node, detail=f"{n.state} · {_duration(n.seconds)}", state=n.state,
            href=href(n) if href else "", title=f"{n.node} ({n.type}): {n.state}, {_duration(n.seconds)}",
        )
        for n in latest_per_node(r.nodes)
    ]
    return graph.svg(nodes, edges)


def latest_per_node(nodes: Sequence[lineage.NodeRun]) -> list[lineage.NodeRun]:
    """One box per node: its last execution in the run (a retried node has several)."""
    last: dict[str, lineage.NodeRun] = {}
    for n in nodes:
        last[n.node] = n
    return list(last.values())


def lineage_graph(p: lineage.Provenance, href: Callable[[str, int], str] | None = None) -> str:
    """A provenance graph as SVG: artifacts (rounded) and executions; `href`
    makes each box a link (kind "artifact" or "execution", id)."""
    nodes = []
    for e in sorted(p.executions.values(), key=lambda e: (e.started, e.id)):
        source = source_detail(e)
        nodes.append(graph.GraphNode(
            id=f"e{e.id}", label=e.node, detail=source or f"{e.state} · run {e.run_id or '-'}", kind="execution",
            state=e.state, href=href("execution", e.id) if href else "",
            title=f"execution {e.id}: {e.node} ({e.type}), {e.state}" + (f"; reads {source}" if source else ""),
        ))
    for a in sorted(p.artifacts.values(), key=lambda a: a.id):
        nodes.append(graph.GraphNode(
            id=f"a{a.id}", label=f"{a.type} {a.id}", detail="/".join(a.uri.rstrip("/").split("/")[-3:]),
            kind="artifact", state="gone" if a.files == "gone" else a.state,
            href=href("artifact", a.id) if href else "", title=f"{a.type} {a.id}: {a.uri}",
        ))
    edges = [(a, b) for a, b, _ in p.edges()]
    return graph.svg(nodes, edges, highlight=f"a{p.root}")


def source_detail(e: lineage.ExecutionInfo) -> str:
    """For an execution with no input artifact (an ExampleGen), the data it read."""
    if any(e.inputs.values()):
        return ""
    for key in ("input_base", "input_path", "input_uri"):
        if e.parameters.get(key):
            return str(e.parameters[key])
    return ""


# ---------------------------------------------------------------------------
# The site
# ---------------------------------------------------------------------------


class Site:
    """Answers requests for one store. One MLMD connection, used by one
    request at a time (MLMD's Python store is not meant for concurrent use)."""

    def __init__(self, store: str | lineage.Store) -> None:
        self.store = lineage.open_store(store)
        self._lock = threading.Lock()

    # -- routing ---------------------------------------------------------------

    def respond(self, raw_path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a request path."""
        try:
            with self._lock:
                return self._route(raw_path)
        except Refused as e:
            return 403, "text/html; charset=utf-8", page("Refused", f"<p>{html.escape(str(e))}</p>").encode()
        except (NotFound, lineage.LineageNotFoundError) as e:
            return 404, "text/html; charset=utf-8", page("Not found", f"<p>{html.escape(str(e))}</p>").encode()
        except Exception:  # noqa: BLE001 - a broken page must not stop the site
            body = page("Error", f"<pre>{html.escape(traceback.format_exc())}</pre>")
            return 500, "text/html; charset=utf-8", body.encode()

    def _route(self, raw_path: str) -> tuple[int, str, bytes]:
        parsed = urllib.parse.urlsplit(raw_path)
        query = urllib.parse.parse_qs(parsed.query)
        raw_parts = [p for p in parsed.path.split("/") if p]
        if raw_parts and raw_parts[0] == "files":
            return self._file(raw_parts[1:])
        parts = [urllib.parse.unquote(p) for p in raw_parts]
        html_page: str
        if not parts:
            html_page = self.runs_page()
        elif parts[0] == "run" and len(parts) == 2:
            html_page = self.run_page(parts[1])
        elif parts[0] == "api" and len(parts) == 3 and parts[1] == "run":
            return 200, "application/json", self.run_json(parts[2]).encode()
        elif parts[0] == "execution" and len(parts) == 2:
            html_page = self.execution_page(_int(parts[1]))
        elif parts[0] == "artifact" and len(parts) == 2:
            html_page = self.artifact_page(_int(parts[1]))
        elif parts[0] == "lineage" and len(parts) == 2:
            direction = (query.get("direction") or ["up"])[0]
            if direction not in ("up", "down"):
                raise NotFound(f"direction must be 'up' or 'down', not {direction!r}")
            html_page = self.lineage_page(_int(parts[1]), direction)
        elif parts[0] == "diff" and len(parts) == 1:
            a, b = (query.get("a") or ["previous"])[0], (query.get("b") or ["latest"])[0]
            html_page = self.diff_page(a, b)
        else:
            raise NotFound(f"no page at {parsed.path}")
        return 200, "text/html; charset=utf-8", html_page.encode()

    # -- pages -----------------------------------------------------------------

    def runs_page(self) -> str:
        found = lineage.runs(self.store, last=_RUNS_SHOWN)
        found.sort(key=lambda r: r.started, reverse=True)
        rows = "".join(
            f'<tr class="run {r.state.lower()}"><td><a href="/run/{_q(r.run_id)}">{html.escape(r.run_id)}</a></td>'
            f"<td>{html.escape(r.pipeline)}</td><td class=state>{r.state}</td><td>{_when(r.started)}</td>"
            f"<td>{_duration(r.seconds)}</td><td>{len(latest_per_node(r.nodes))}</td></tr>"
            for r in found
        )
        body = (
            f"<p>Store: <code>{html.escape(repr(self.store))}</code></p>"
            + ('<table id="runs"><tr><th>run</th><th>pipeline</th><th>state</th><th>started</th>'
               f"<th>duration</th><th>nodes</th></tr>{rows}</table>" if found else "<p>No runs recorded.</p>")
        )
        return page("Runs", body)

    def run_json(self, run_id: str) -> str:
        r = lineage.run(self.store, run_id)
        return json.dumps({
            "run_id": r.run_id, "pipeline": r.pipeline, "state": r.state, "seconds": r.seconds,
            "nodes": [{"node": n.node, "state": n.state, "seconds": n.seconds, "execution_id": n.execution_id}
                      for n in latest_per_node(r.nodes)],
            "svg": run_graph(r, _execution_href),
        })

    def run_page(self, run_id: str) -> str:
        r = lineage.run(self.store, run_id)
        rows = "".join(
            f'<tr class="{n.state.lower()}"><td><a href="/execution/{n.execution_id}">{html.escape(n.node)}</a></td>'
            f"<td class=state>{n.state}</td><td>{_when(n.started)}</td><td>{_duration(n.seconds)}</td>"
            f"<td>{_artifact_links(n.outputs)}</td><td>{html.escape(n.rerun_reason or n.error or '')}</td></tr>"
            for n in latest_per_node(r.nodes)
        )
        before = self._run_before(r)
        compare = ""
        if before:
            compare = (f'<p><a href="/diff?a={_q(before)}&b={_q(r.run_id)}">Compare with the run before '
                       f"({html.escape(before)})</a></p>")
        body = (
            f'<p>Pipeline <b>{html.escape(r.pipeline)}</b> · state <b id="run-state">{r.state}</b> · started '
            f'{_when(r.started)} · <span id="run-duration">{_duration(r.seconds)}</span></p>{compare}'
            f'<div id="dag">{run_graph(r, _execution_href)}</div>'
            "<h2>Nodes</h2><table id=nodes><tr><th>node</th><th>state</th><th>started</th><th>duration</th>"
            f"<th>outputs</th><th>why it ran / error</th></tr>{rows}</table>"
        )
        script = ""
        if r.state == "RUNNING":
            # While the run is in progress the DAG is redrawn from /api/run/.
            script = (
                f"const url={json.dumps('/api/run/' + _q(r.run_id))};"
                "async function poll(){try{const r=await fetch(url);const d=await r.json();"
                "document.getElementById('dag').innerHTML=d.svg;"
                "document.getElementById('run-state').textContent=d.state;"
                f"if(d.state==='RUNNING'){{setTimeout(poll,{_POLL_MS});}}else{{location.reload();}}}}"
                f"catch(e){{setTimeout(poll,{_POLL_MS});}}}}setTimeout(poll,{_POLL_MS});"
            )
        return page(f"Run {r.run_id}", body, script=script)

    def _run_before(self, r: lineage.Run) -> str | None:
        """The pipeline's run before `r`, looked for among its newest runs in
        a window that grows only as far as needed (a recent run costs a
        query of a few runs, not of all of them)."""
        window = 2
        while True:
            recent = [x.run_id for x in lineage.runs(self.store, r.pipeline, last=window)]
            if r.run_id in recent[:-1]:
                return recent[recent.index(r.run_id) + 1]
            if len(recent) < window or window >= _RUNS_SHOWN:
                return None
            window *= 4

    def execution_page(self, execution_id: int) -> str:
        e = lineage.execution(self.store, execution_id)
        run_link = f'<a href="/run/{_q(e.run_id)}">{html.escape(e.run_id)}</a>' if e.run_id else "-"
        body = (
            f"<p>Node <b>{html.escape(e.node)}</b> ({html.escape(e.type)}) · state <b>{e.state}</b> · run {run_link}"
            f" · started {_when(e.started)} · {_duration(e.seconds)}</p>"
            + (f"<h2>Error</h2><pre class=error>{html.escape(e.error)}</pre>" if e.error else "")
            + "<h2>Inputs</h2>" + _keyed_links(e.inputs)
            + "<h2>Outputs</h2>" + _keyed_links(e.outputs)
            + "<h2>Parameters</h2>" + _table(e.parameters)
            + "<h2>User code</h2>" + _table(e.code)
            + "<h2>Data fingerprints</h2>" + _table(e.fingerprints)
            + (f"<p>Cache key <code>{html.escape(e.cache_key)}</code></p>" if e.cache_key else "")
        )
        return page(f"Execution {e.id}: {e.node}", body)

    def artifact_page(self, artifact_id: int) -> str:
        a = lineage.artifact(self.store, artifact_id)
        made_by = lineage.producer(self.store, a)
        used_by = lineage.consumers(self.store, a)
        where = a.local_path or a.uri
        gone = a.files == "gone"
        facts = {
            "type": a.type, "URI": a.uri, "state": a.state, "created": _when(a.created),
            "files": "gone: only the metadata is left" if gone else (where if where != a.uri else "present"),
        }
        body = (
            _table(facts)
            + render.render_properties(a.properties, {}, link=_artifact_href)
            + "<p>Made by " + (_execution_link(made_by) if made_by else "no recorded execution")
            + ". Used by " + (", ".join(_execution_link(e) for e in used_by) or "nothing yet") + ".</p>"
            + f'<p><a href="/lineage/{a.id}?direction=up">Lineage upstream</a> · '
            f'<a href="/lineage/{a.id}?direction=down">downstream</a></p>'
            + f'<section class="content">{_render(a, where)}</section>'
            # The renderer lists the files of the types it has no view of itself.
            + (_file_list(a, where) if not gone and a.type in _CONTENT_TYPES else "")
        )
        return page(f"{a.type} {a.id}", body)

    def lineage_page(self, artifact_id: int, direction: str) -> str:
        p = lineage.provenance(self.store, artifact_id, direction)  # type: ignore[arg-type]
        other = "down" if direction == "up" else "up"
        sources = [s for s in (source_detail(e) for e in p.sources()) if s]
        body = (
            f'<p><a href="/artifact/{artifact_id}">The artifact</a> · '
            f'<a href="/lineage/{artifact_id}?direction={other}">{other}stream instead</a></p>'
            + (f"<p>Source data: {', '.join(f'<code>{html.escape(s)}</code>' for s in sources)}</p>" if sources else "")
            + f'<div id="lineage">{lineage_graph(p, _href)}</div>'
        )
        return page(f"Lineage of artifact {artifact_id} ({direction}stream)", body)

    def diff_page(self, run_a: str, run_b: str) -> str:
        d = lineage.diff(self.store, run_a, run_b)
        rows = "".join(
            f'<tr class="{"reran" if n.reran else "same"}"><td>{html.escape(n.node)}</td>'
            f"<td>{n.state_a or '-'}</td><td>{n.state_b or '-'}</td><td>{'yes' if n.reran else 'no'}</td>"
            f"<td>{'<br>'.join(html.escape(c) for c in n.changes)}</td></tr>"
            for n in d.nodes
        )
        metric_rows = "".join(
            f"<tr><td>{html.escape(where)}</td><td>{html.escape(name)}</td><td>{_num(a)}</td><td>{_num(b)}</td></tr>"
            for where, metrics in d.metrics.items() for name, (a, b) in metrics.items()
        )
        schema = "".join(
            f"<li>{html.escape(where)}: {'; '.join(html.escape(c) for c in changes)}</li>"
            for where, changes in d.schema.items()
        )
        body = (
            f'<p>Run <a href="/run/{_q(d.run_a)}">{html.escape(d.run_a)}</a> against '
            f'<a href="/run/{_q(d.run_b)}">{html.escape(d.run_b)}</a></p>'
            "<table id=diff><tr><th>node</th><th>state a</th><th>state b</th><th>re-ran</th><th>changes</th></tr>"
            f"{rows}</table>"
            + (f"<h2>Schema</h2><ul>{schema}</ul>" if schema else "")
            + ("<h2>Metrics (overall)</h2><table><tr><th>where</th><th>metric</th><th>a</th><th>b</th></tr>"
               f"{metric_rows}</table>" if metric_rows else "")
            + ("".join(f"<p class=note>{html.escape(n)}</p>" for n in d.notes))
        )
        return page(f"Diff {d.run_a} → {d.run_b}", body)

    # -- files -----------------------------------------------------------------

    def _file(self, raw_parts: list[str]) -> tuple[int, str, bytes]:
        """A file under an artifact's directory, refusing every way out."""
        if len(raw_parts) < 2:
            raise NotFound("a file is addressed as /files/<artifact id>/<path inside it>")
        rel_parts = []
        for raw in raw_parts[1:]:
            if any(bad in raw.lower() for bad in ("%2f", "%5c", "%00")):
                raise Refused("encoded slashes are not allowed in a file path")
            part = urllib.parse.unquote(raw)
            if part in (".", "..") or "\\" in part or "\x00" in part:
                raise Refused(f"path segment {part!r} is not allowed")
            rel_parts.append(part)
        a = lineage.artifact(self.store, _int(urllib.parse.unquote(raw_parts[0])))
        base = a.local_path or a.uri
        if a.files == "gone" or not fs.exists(base):
            raise NotFound(f"the files of artifact {a.id} are gone ({a.uri})")
        root = _pipeline_root(base)
        real_root, real_base = fs.realpath(root), fs.realpath(base)
        target = fs.realpath(fs.join(base, *rel_parts))
        if not (_inside(real_base, real_root) and _inside(target, real_base)):
            raise Refused(f"{'/'.join(rel_parts)} leads out of artifact {a.id}'s directory in its pipeline root")
        if not fs.isfile(target):
            raise NotFound(f"artifact {a.id} has no file {'/'.join(rel_parts)}")
        if fs.stat(target).size > _MAX_FILE:
            raise Refused(f"{'/'.join(rel_parts)} is larger than {_MAX_FILE >> 20} MB")
        kind = mimetypes.guess_type(target)[0] or "application/octet-stream"
        if kind.startswith("text/") or target.endswith((".pbtxt", ".json")):
            kind = "text/plain; charset=utf-8"  # shown, never run as a page of this site
        return 200, kind, fs.read_bytes(target)


def _pipeline_root(artifact_dir: str) -> str:
    """The pipeline root an artifact directory was written under: Conveyor
    and TFX both lay artifacts out as `<root>/<node>/<key>/<execution>`."""
    root = artifact_dir.rstrip("/")
    for _ in range(3):
        root = fs.dirname(root)
    return root


def _inside(path: str, folder: str) -> bool:
    folder = folder.rstrip("/")
    return bool(folder) and (path == folder or path.startswith(folder + "/"))


def _render(a: lineage.ArtifactInfo, where: str) -> str:
    try:
        return render.render_artifact(a.type, where, a.properties, {}, link=_artifact_href)
    except Exception as e:  # noqa: BLE001 - the metadata is still worth showing
        return f'<p class=error>Could not show the content of {html.escape(where)}: {html.escape(repr(e))}</p>'


def _file_list(a: lineage.ArtifactInfo, where: str, limit: int = 100) -> str:
    try:
        names = fs.walk_files(where) if fs.isdir(where) else []
    except OSError:
        return ""
    items = "".join(
        f'<li><a href="/files/{a.id}/{"/".join(_q(p) for p in name.split("/"))}">{html.escape(name)}</a></li>'
        for name in names[:limit]
    )
    more = f"<p>and {len(names) - limit} more</p>" if len(names) > limit else ""
    return f"<h2>Files</h2><ul class=files>{items}</ul>{more}" if names else ""


def _artifact_href(ident: int) -> str:
    return f"/artifact/{ident}"


def _href(kind: str, ident: int) -> str:
    return f"/lineage/{ident}?direction=up" if kind == "artifact" else f"/execution/{ident}"


def _execution_href(n: lineage.NodeRun) -> str:
    return f"/execution/{n.execution_id}"


def _execution_link(e: lineage.ExecutionInfo) -> str:
    return f'<a href="/execution/{e.id}">{html.escape(e.node)} (execution {e.id})</a>'


def _artifact_links(by_key: dict[str, list[int]]) -> str:
    return " ".join(f'<a href="/artifact/{a}">{html.escape(k)} {a}</a>' for k, ids in by_key.items() for a in ids)


def _keyed_links(by_key: dict[str, list[int]]) -> str:
    if not any(by_key.values()):
        return "<p>none</p>"
    return "<ul>" + "".join(
        f"<li>{html.escape(k)}: " + ", ".join(f'<a href="/artifact/{a}">artifact {a}</a>' for a in ids) + "</li>"
        for k, ids in by_key.items()
    ) + "</ul>"


def _table(values: dict[str, Any]) -> str:
    if not values:
        return "<p>none</p>"
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_text(v))}</td></tr>" for k, v in sorted(values.items())
    )
    return f"<table class=facts>{rows}</table>"


def _text(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= 2000 else text[:2000] + "…"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.6g}"


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise NotFound(f"{text!r} is not an id (a number)") from None


def _q(text: str) -> str:
    return urllib.parse.quote(text, safe="")


_CSS = """
nav{background:#263238;padding:.5em 1em}nav a{color:#fff;font-weight:bold;text-decoration:none}
main{padding:0 1em 2em}#dag,#lineage,.graph-box{overflow-x:auto}
svg.graph .node rect{fill:#eceff1;stroke:#607d8b;stroke-width:1.2}
svg.graph .node.complete rect,svg.graph .node.live rect{fill:#e8f5e9;stroke:#2e7d32}
svg.graph .node.cached rect{fill:#e3f2fd;stroke:#1565c0}
svg.graph .node.running rect{fill:#fff8e1;stroke:#f9a825;stroke-dasharray:4 2}
svg.graph .node.failed rect,svg.graph .node.canceled rect{fill:#ffebee;stroke:#c62828}
svg.graph .node.gone rect{fill:#fafafa;stroke:#9e9e9e;stroke-dasharray:2 2}
svg.graph .node.highlight rect{stroke-width:3}
svg.graph .label{font:600 12px sans-serif}svg.graph .detail{font:11px sans-serif;fill:#455a64}
svg.graph .edge{fill:none;stroke:#78909c;stroke-width:1.2}svg.graph marker path{fill:#78909c}
tr.failed td.state,tr.canceled td.state{color:#c62828}tr.running td.state{color:#f9a825}
pre.error{background:#ffebee;padding:.5em;white-space:pre-wrap}
"""


# ---------------------------------------------------------------------------
# Serving
# ---------------------------------------------------------------------------


def make_server(store: str | lineage.Store, port: int = 8080) -> http.server.ThreadingHTTPServer:
    """A server on 127.0.0.1:`port` (0: any free port) for the store."""
    site = Site(store)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            status, kind, body = site.respond(self.path)
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
            pass  # quiet console: the site prints its address once

    return http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)


def serve(store: str | lineage.Store, port: int = 8080, echo: Callable[[str], None] = print) -> None:
    """Serves until interrupted."""
    server = make_server(store, port)
    echo(f"Conveyor UI on http://127.0.0.1:{server.server_address[1]}/ (store: {store}); Ctrl-C stops it")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
