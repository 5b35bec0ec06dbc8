"""Directed graphs drawn as inline SVG: a run's DAG and an artifact's
lineage. Layered layout (longest path from the sources), computed here so
a page needs no JavaScript library and a report opens offline."""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Sequence

__all__ = ["GraphNode", "layout", "svg"]

_COLUMN, _ROW = 230, 64  # spacing between layers and between nodes of a layer
_WIDTH, _HEIGHT = 190, 44  # a node's box
_MARGIN = 12


@dataclasses.dataclass
class GraphNode:
    """A box in the drawing. `kind` becomes its CSS class (with `state`), so
    the page's stylesheet colours states; `href` makes the box a link."""

    id: str
    label: str
    detail: str = ""
    kind: str = "execution"  # "execution" or "artifact"
    state: str = ""
    href: str = ""
    title: str = ""


def layout(nodes: Sequence[GraphNode], edges: Sequence[tuple[str, str]]) -> dict[str, tuple[int, int]]:
    """Each node's (layer, row): a node sits one layer right of its furthest
    predecessor; rows keep the input order inside a layer. Edges to unknown
    nodes are ignored; a cycle (never in MLMD lineage) is cut where found."""
    known = {n.id for n in nodes}
    preds: dict[str, list[str]] = {n.id: [] for n in nodes}
    for a, b in edges:
        if a in known and b in known and a != b:
            preds[b].append(a)
    layer: dict[str, int] = {}
    visiting: set[str] = set()

    def depth(node: str) -> int:
        if node in layer:
            return layer[node]
        if node in visiting:
            return 0
        visiting.add(node)
        layer[node] = max((depth(p) + 1 for p in preds[node]), default=0)
        visiting.discard(node)
        return layer[node]

    rows: dict[int, int] = {}
    placed: dict[str, tuple[int, int]] = {}
    for n in nodes:
        col = depth(n.id)
        placed[n.id] = (col, rows.get(col, 0))
        rows[col] = rows.get(col, 0) + 1
    return placed


def svg(nodes: Sequence[GraphNode], edges: Sequence[tuple[str, str]], *, highlight: str = "") -> str:
    """The graph as an <svg> element: boxes (links when they have an href)
    and arrows; `highlight` marks one node (the artifact a lineage page is
    about)."""
    placed = layout(nodes, edges)
    if not placed:
        return '<p class="empty">nothing to draw</p>'
    width = (max(c for c, _ in placed.values()) + 1) * _COLUMN + 2 * _MARGIN
    height = (max(r for _, r in placed.values()) + 1) * _ROW + 2 * _MARGIN

    def box(node_id: str) -> tuple[int, int]:
        col, row = placed[node_id]
        return _MARGIN + col * _COLUMN, _MARGIN + row * _ROW

    parts = [
        f'<svg class="graph" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z"/></marker></defs>',
    ]
    for a, b in edges:
        if a not in placed or b not in placed or a == b:
            continue
        (x1, y1), (x2, y2) = box(a), box(b)
        parts.append(
            f'<path class="edge" marker-end="url(#arrow)" d="M {x1 + _WIDTH} {y1 + _HEIGHT // 2} '
            f'C {x1 + _WIDTH + 20} {y1 + _HEIGHT // 2}, {x2 - 20} {y2 + _HEIGHT // 2}, '
            f'{x2} {y2 + _HEIGHT // 2}"/>'
        )
    for n in nodes:
        x, y = box(n.id)
        classes = " ".join(c for c in ("node", n.kind, n.state.lower(), "highlight" if n.id == highlight else "") if c)
        label, detail = _fit(n.label), _fit(n.detail)
        inner = (
            f'<title>{html.escape(n.title or n.label)}</title>'
            f'<rect x="{x}" y="{y}" width="{_WIDTH}" height="{_HEIGHT}" rx="{14 if n.kind == "artifact" else 4}"/>'
            f'<text x="{x + 8}" y="{y + 18}" class="label">{html.escape(label)}</text>'
            f'<text x="{x + 8}" y="{y + 35}" class="detail">{html.escape(detail)}</text>'
        )
        attrs = f'class="{classes}" data-node="{html.escape(n.id)}" data-state="{html.escape(n.state)}"'
        if n.href:
            parts.append(f'<a href="{html.escape(n.href)}" {attrs}>{inner}</a>')
        else:
            parts.append(f"<g {attrs}>{inner}</g>")
    parts.append("</svg>")
    return "".join(parts)


def _fit(text: str, limit: int = 27) -> str:
    """Text that fits a box (the full text is the box's tooltip)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
