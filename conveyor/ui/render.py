"""HTML fragments for artifact pages: the web UI's and `conveyor report`'s.

    from conveyor.ui import render
    body = render.render_artifact("ExampleStatistics", uri, properties, custom_properties,
                                  link=lambda artifact_id: f"/artifacts/{artifact_id}")
    page = f"<style>{render.render_css()}</style>{body}"

Every function is pure: it reads the artifact's files (through `conveyor.fs`,
so an s3:// or gs:// URI works as a local one) and returns a fragment, without
<html> or <head>, scripts or external resources; charts are inline SVG, so a
report opens offline. All text from files and metadata is HTML-escaped, and
the output depends only on the inputs (sorted, numbers formatted one way).

Files read, as TFX lays them out:
- ExampleStatistics: `Split-<name>/FeatureStats.pb` (DatasetFeatureStatisticsList);
- Schema: `schema.pbtxt`;
- ExampleAnomalies: `Split-<name>/SchemaDiff.pb` (Anomalies);
- ModelEvaluation: TFMA's `metrics*`, `plots*`, `validations*` TFRecords and
  `eval_config.json`;
- ModelBlessing: `BLESSED` / `NOT_BLESSED` (when the metadata does not say);
- other types: a listing of the files under the URI.

TFMA's protos are decoded without importing TFMA: its package imports
TensorFlow (seconds and a large part of a gigabyte, for a web page). Their
descriptors are taken from TFMA's generated `*_pb2.py` files into a private
descriptor pool (see `_tfma_classes`).
"""

from __future__ import annotations

import ast
import functools
import html
import importlib
import importlib.util
import json
import math
import pathlib
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from conveyor import fs

__all__ = [
    "render_artifact",
    "render_css",
    "render_statistics",
    "render_schema",
    "render_anomalies",
    "render_evaluation",
    "render_blessing",
    "render_pushed_model",
    "render_files",
    "render_properties",
    "MAX_FILES",
]

Link = Callable[[int], str]

# A listing of an artifact's files shows at most this many.
MAX_FILES = 200
_TOP_VALUES = 5
_DOMAIN_VALUES = 8

_CSS = """\
.cv-artifact{font:13px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1f2328}
.cv-artifact h3{font-size:15px;margin:14px 0 6px}
.cv-artifact h4{font-size:13px;margin:10px 0 4px}
.cv-artifact code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;word-break:break-all}
.cv-table{border-collapse:collapse;margin:4px 0 10px}
.cv-table th,.cv-table td{border:1px solid #d0d7de;padding:2px 6px;vertical-align:top;text-align:left}
.cv-table th{background:#f6f8fa;font-weight:600}
.cv-table td.cv-n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.cv-table td.cv-none{color:#8c959f;text-align:center}
.cv-table .cv-split-start{border-left:2px solid #8c959f}
.cv-top{margin:0;padding-left:16px;font-size:12px}
.cv-muted{color:#656d76}
.cv-gone,.cv-error{background:#fff8c5;border:1px solid #d4a72c;padding:6px 8px;border-radius:4px}
.cv-error{background:#ffebe9;border-color:#ff8182}
.cv-verdict{display:inline-block;font-weight:700;padding:2px 8px;border-radius:4px}
.cv-ok{background:#dafbe1;color:#1a7f37}
.cv-bad{background:#ffebe9;color:#cf222e}
.cv-unknown{background:#eaeef2;color:#57606a}
.cv-chart{display:block}
.cv-chart .cv-bar{fill:#0969da}
.cv-chart .cv-line{fill:none;stroke:#0969da;stroke-width:1.5}
.cv-chart .cv-ref{fill:none;stroke:#8c959f;stroke-dasharray:3 3}
.cv-chart .cv-axis{stroke:#8c959f}
.cv-chart text{font:10px system-ui,sans-serif;fill:#57606a}
.cv-props summary{cursor:pointer;color:#57606a}
"""


def render_css() -> str:
    """The stylesheet the fragments' classes (`cv-*`) expect; the UI's pages
    and the report both inline it."""
    return _CSS


# ---------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------


def render_artifact(
    type_name: str,
    uri: str,
    properties: dict[str, Any],
    custom_properties: dict[str, Any],
    link: Link | None = None,
) -> str:
    """An artifact's page body: what its files hold, by type (TFX's type
    names), else a listing of its files; when its URI no longer exists, a
    notice that its files are gone and what its metadata still tells (a
    blessing's verdict, a push's destination). The page shows the URI and
    the properties themselves (`render_properties` makes a table of them).
    `link(artifact_id)` is the URL of another artifact's page."""
    props = {**custom_properties, **properties}
    parts = [f'<section class="cv-artifact" data-type="{_e(type_name)}">']
    present = bool(uri) and fs.exists(uri)
    if not present:
        parts.append(_gone(uri))
    try:
        if type_name == "ModelBlessing":
            parts.append(render_blessing(uri if present else "", props, link))
        elif type_name == "PushedModel":
            parts.append(render_pushed_model(props))
            if present:
                parts.append(render_files(uri))
        elif present:
            renderer = _FILE_RENDERERS.get(type_name)
            parts.append(renderer(uri, props) if renderer else render_files(uri))
    except Exception as e:  # noqa: BLE001 - a page shows what it could not read instead of failing
        parts.append(f'<p class="cv-error">Could not read the files of this artifact: '
                     f"{_e(type(e).__name__)}: {_e(e)}</p>")
        if present:
            parts.append(render_files(uri))
    parts.append("</section>")
    return "\n".join(parts)


def _gone(uri: str) -> str:
    if not uri:
        return '<p class="cv-gone">This artifact has no URI: it has no files to show.</p>'
    return (f'<p class="cv-gone">The files of this artifact are gone (URI <code>{_e(uri)}</code>): '
            "only its metadata is shown.</p>")


def render_properties(properties: dict[str, Any], custom_properties: dict[str, Any],
                      link: Link | None = None) -> str:
    """An artifact's properties and custom properties, sorted, in a
    collapsible table; `*_model_id` values link to those models."""
    rows = []
    for kind, values in (("property", properties), ("custom", custom_properties)):
        for name in sorted(values):
            value = values[name]
            shown = _e(_short(_plain(value), 300))
            if link is not None and name.endswith("_model_id") and isinstance(value, int):
                shown = f'<a href="{_e(link(value))}">{shown}</a>'
            rows.append([_e(name), shown, f'<span class="cv-muted">{kind}</span>'])
    if not rows:
        return ""
    return ('<details class="cv-props"><summary>Properties</summary>'
            + _table(["Name", "Value", "Kind"], rows) + "</details>")


def render_files(uri: str) -> str:
    """The files under a URI (sorted, names and sizes, at most MAX_FILES), or
    a notice that they are gone."""
    if not uri or not fs.exists(uri):
        return _gone(uri)
    if fs.isfile(uri):
        names, base = [fs.basename(uri)], fs.dirname(uri)
    else:
        names, base = fs.walk_files(uri), uri
    if not names:
        return '<p class="cv-muted">No files under this URI.</p>'
    shown = names[:MAX_FILES]
    stats = fs.stat_many([fs.join(base, *n.split("/")) for n in shown])
    rows = [[f"<code>{_e(n)}</code>", _n_cell(_size(s.size))] for n, s in zip(shown, stats, strict=True)]
    total = sum(s.size for s in stats)
    more = (f" (the first {MAX_FILES} of {len(names)} shown)" if len(names) > MAX_FILES else "")
    return (f"<h3>Files</h3><p class=\"cv-muted\">{len(names)} file{'s' if len(names) != 1 else ''}"
            f"{more}, {_e(_size(total))} listed.</p>" + _table(["File", "Size"], rows))


# ---------------------------------------------------------------------------
# ExampleStatistics
# ---------------------------------------------------------------------------


def render_statistics(uri: str, properties: dict[str, Any] | None = None) -> str:
    """Per feature and split, side by side: numeric features (count, missing,
    mean, std, min, median, max, zeros, histogram), then string features
    (count, missing, unique, top values with a bar chart)."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    splits = _split_dirs(uri, properties)
    datasets: dict[str, Any] = {}
    for split, path in splits:
        data = _read_stats(path, statistics_pb2)
        if data is not None:
            datasets[split] = data
    if not datasets:
        return ('<p class="cv-error">No statistics found (expected <code>Split-&lt;name&gt;/FeatureStats.pb</code>)'
                "</p>" + render_files(uri))
    names = list(datasets)
    features: dict[str, dict[str, Any]] = {}  # feature -> split -> FeatureNameStatistics
    for split, dataset in datasets.items():
        for feature in dataset.features:
            features.setdefault(_feature_name(feature), {})[split] = feature
    type_name = statistics_pb2.FeatureNameStatistics.Type.Name
    numeric = sorted(f for f, by in features.items() if any(s.HasField("num_stats") for s in by.values()))
    others = sorted(f for f in features if f not in numeric)
    counts = {s: _num(d.num_examples) for s, d in datasets.items()}
    out = [f'<h3>Statistics</h3><p class="cv-muted">{len(features)} features, splits: '
           f"{_e(', '.join(names))}.</p>"]
    for title, chosen, sub, cells_of, cls in (
        ("Numeric features", numeric, _NUMERIC_COLUMNS, _numeric_cells, "cv-stats-numeric"),
        ("String and other features", others, _STRING_COLUMNS, _string_cells, "cv-stats-string"),
    ):
        if not chosen:
            continue
        rows = []
        for name in chosen:
            by = features[name]
            cells = [f"<th>{_e(name)}</th>", f"<td>{_e(_types(by, type_name))}</td>"]
            for split in names:
                cells += cells_of(by.get(split), len(sub))
            rows.append(f'<tr data-feature="{_e(name)}">' + "".join(cells) + "</tr>")
        out.append(f"<h4>{title}</h4>" + _grouped_table(counts, sub, rows, cls))
    return "\n".join(out)


def _read_stats(path: str, statistics_pb2: Any) -> Any:
    """The first dataset (all examples; later ones are slices) of a split."""
    proto = statistics_pb2.DatasetFeatureStatisticsList()
    binary, framed = fs.join(path, "FeatureStats.pb"), fs.join(path, "stats_tfrecord")
    if fs.isfile(binary):
        proto.ParseFromString(fs.read_bytes(binary))
    elif fs.isfile(framed):  # TFX before 0.30 wrote one TFRecord
        records = _tfrecords(framed)
        if records:
            proto.ParseFromString(records[0])
    return proto.datasets[0] if proto.datasets else None


def _feature_name(feature: Any) -> str:
    return ".".join(feature.path.step) if feature.HasField("path") else feature.name


def _types(by_split: dict[str, Any], type_name: Callable[[int], str]) -> str:
    return "/".join(dict.fromkeys(type_name(f.type) for f in by_split.values()))


def _common(feature: Any) -> Any:
    kind = feature.WhichOneof("stats")
    return getattr(feature, kind).common_stats if kind in ("num_stats", "string_stats", "bytes_stats",
                                                           "struct_stats") else None


def _count_cells(feature: Any) -> list[str]:
    """Count (examples with the feature) and missing, with the share of empty
    lists when it is exact: TFX's CSV reader writes a missing value as one."""
    common = _common(feature)
    if common is None:
        return [_none_cell(), _none_cell()]
    total = common.num_non_missing + common.num_missing
    missing = _pct(common.num_missing, total)
    # Exact only when no example has more than one value and the value counts were computed.
    counted = common.tot_num_values > 0 or len(common.num_values_histogram.buckets) > 0
    consistent = abs(common.avg_num_values * common.num_non_missing - common.tot_num_values) < 1
    if counted and consistent and common.max_num_values <= 1 and common.tot_num_values < common.num_non_missing:
        missing += f", {_pct(common.num_non_missing - common.tot_num_values, total)} empty"
    return [_n_cell(_num(common.num_non_missing)), _n_cell(missing)]


def _has_values(common: Any) -> bool:
    # Without values TFDV leaves mean, min, max... at 0: show nothing rather than zeros.
    return common.tot_num_values > 0 or common.avg_num_values > 0


def _numeric_cells(feature: Any, width: int) -> list[str]:
    if feature is None or not feature.HasField("num_stats"):
        return _split_start([_none_cell()] * width)
    num = feature.num_stats
    values = num.common_stats.tot_num_values or num.common_stats.num_non_missing
    cells = _count_cells(feature)
    if not _has_values(num.common_stats):
        return _split_start(cells + [_none_cell()] * (width - len(cells)))
    cells += [_n_cell(_num(v)) for v in (num.mean, num.std_dev, num.min, num.median, num.max)]
    cells.append(_n_cell(_pct(num.num_zeros, values)))
    standard = [h for h in num.histograms if h.type == h.STANDARD]
    cells.append(f"<td>{_histogram_svg(standard[0]) if standard else ''}</td>")
    return _split_start(cells)


def _string_cells(feature: Any, width: int) -> list[str]:
    if feature is None:
        return _split_start([_none_cell()] * width)
    cells = _count_cells(feature)
    if not feature.HasField("string_stats"):
        return _split_start(cells + [_none_cell()] * (width - len(cells)))
    stats = feature.string_stats
    top = [(v.value, v.frequency) for v in stats.top_values[:_TOP_VALUES]]
    if not top:  # newer TFDV may fill only the rank histogram
        top = [(b.label, b.sample_count) for b in stats.rank_histogram.buckets[:_TOP_VALUES]]
    cells.append(_n_cell(_num(stats.unique)))
    items = "".join(f'<li><span class="cv-v">{_e(_short(v, 60))}</span> <span class="cv-n">{_e(_num(c))}</span></li>'
                    for v, c in top)
    chart = _hbar_svg([_short(v, 24) for v, _ in top], [c for _, c in top], width=150, label_width=0)
    cells.append(f'<td><ol class="cv-top">{items}</ol>{chart}</td>' if top else _none_cell())
    return _split_start(cells)


def _split_start(cells: list[str]) -> list[str]:
    # The first cell of each split's group gets a heavier left border.
    return [_add_class(cells[0], "cv-split-start"), *cells[1:]]


def _add_class(cell: str, cls: str) -> str:
    if cell.startswith('<td class="'):
        return cell.replace('<td class="', f'<td class="{cls} ', 1)
    return cell.replace("<td", f'<td class="{cls}"', 1)


_NUMERIC_COLUMNS = ("count", "missing", "mean", "std", "min", "median", "max", "zeros", "histogram")
_STRING_COLUMNS = ("count", "missing", "unique", "top values")


def _grouped_table(examples: dict[str, str], sub: Sequence[str], rows: list[str], cls: str) -> str:
    """Feature rows under one column group per split (named with its number of examples)."""
    groups = "".join(f'<th colspan="{len(sub)}" class="cv-split-start">{_e(split)} '
                     f'<span class="cv-muted">({_e(count)} examples)</span></th>' for split, count in examples.items())
    sub_head = "".join(f'<th class="cv-split-start">{_e(s)}</th>' if i == 0 else f"<th>{_e(s)}</th>"
                       for _ in examples for i, s in enumerate(sub))
    return (f'<table class="cv-table {cls}"><thead><tr><th rowspan="2">feature</th><th rowspan="2">type</th>'
            f"{groups}</tr><tr>{sub_head}</tr></thead><tbody>" + "\n".join(rows) + "</tbody></table>")


def _histogram_svg(histogram: Any) -> str:
    buckets = list(histogram.buckets)
    if not buckets:
        return ""
    titles = [f"{_num(b.low_value)} to {_num(b.high_value)}: {_num(b.sample_count)}" for b in buckets]
    return _vbar_svg([b.sample_count for b in buckets], titles)


# ---------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------


def render_schema(uri: str, properties: dict[str, Any] | None = None) -> str:
    """The schema's features as a table: type, presence, valency or shape,
    domain, drift and skew thresholds (and environments, when any is set)."""
    del properties  # the schema file says everything
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    path = fs.join(uri, "schema.pbtxt")
    if not fs.isfile(path):
        return '<p class="cv-error">No <code>schema.pbtxt</code> under this URI.</p>' + render_files(uri)
    schema = schema_pb2.Schema()
    text_format.Parse(fs.read_text(path), schema)
    domains = {d.name: d for d in schema.string_domain}
    envs = bool(schema.default_environment) or any(f.in_environment or f.not_in_environment for f in schema.feature)
    head = ["feature", "type", "presence", "valency / shape", "domain", "drift / skew"] + (["environments"] * envs)
    rows = []
    for feature in sorted(schema.feature, key=lambda f: f.name):
        row = [f"<th>{_e(feature.name)}</th>", _e(schema_pb2.FeatureType.Name(feature.type)),
               _e(_presence(feature)), _e(_valency(feature)), _e(_domain(feature, domains)),
               _e(_comparators(feature))]
        if envs:
            row.append(_e(_environments(feature)))
        if feature.deprecated or feature.lifecycle_stage in (schema_pb2.DEPRECATED, schema_pb2.DISABLED):
            row[1] += ' <span class="cv-muted">(deprecated)</span>'
        rows.append(f'<tr data-feature="{_e(feature.name)}">' + row[0]
                    + "".join(f"<td>{c}</td>" for c in row[1:]) + "</tr>")
    out = [f'<h3>Schema</h3><p class="cv-muted">{len(schema.feature)} features.</p>',
           '<table class="cv-table cv-schema"><thead><tr>' + "".join(f"<th>{h}</th>" for h in head)
           + "</tr></thead><tbody>" + "\n".join(rows) + "</tbody></table>"]
    if schema.sparse_feature:
        sparse = [[_e(s.name), _e(", ".join(i.name for i in s.index_feature)), _e(s.value_feature.name)]
                  for s in sorted(schema.sparse_feature, key=lambda s: s.name)]
        out.append("<h4>Sparse features</h4>" + _table(["feature", "index features", "value feature"], sparse))
    if schema.default_environment:
        out.append(f'<p class="cv-muted">Default environments: {_e(", ".join(schema.default_environment))}.</p>')
    return "\n".join(out)


def _presence(feature: Any) -> str:
    if feature.HasField("presence"):
        p = feature.presence
        parts = [f"≥ {_num(p.min_fraction * 100)}%"] if p.HasField("min_fraction") else []
        if p.min_count:
            parts.append(f"min count {_num(p.min_count)}")
        return ", ".join(parts) or "optional"
    if feature.HasField("group_presence"):
        return "all or none of the group" if feature.group_presence.min_fraction else "group"
    return ""


def _valency(feature: Any) -> str:
    if feature.HasField("shape"):
        return "[" + ", ".join(str(d.size) for d in feature.shape.dim) + "]"
    if feature.HasField("value_count"):
        return _range(feature.value_count, "min", "max", "values")
    if feature.HasField("value_counts"):
        return "; ".join(_range(c, "min", "max", "values") for c in feature.value_counts.value_count)
    return ""


def _range(message: Any, low: str, high: str, what: str) -> str:
    lo = getattr(message, low) if message.HasField(low) else None
    hi = getattr(message, high) if message.HasField(high) else None
    if lo is not None and lo == hi:
        return f"{_num(lo)} {what}" if what else _num(lo)
    if lo is None and hi is None:
        return what and f"any {what}"
    text = f"{'' if lo is None else _num(lo)}..{'' if hi is None else _num(hi)}"
    return f"{text} {what}" if what else text


def _domain(feature: Any, domains: dict[str, Any]) -> str:
    kind = feature.WhichOneof("domain_info")
    if kind == "domain":
        named = domains.get(feature.domain)
        return f"{feature.domain}: {_values(named.value)}" if named else feature.domain
    if kind == "string_domain":
        return _values(feature.string_domain.value)
    if kind in ("int_domain", "float_domain"):
        d = getattr(feature, kind)
        text = _range(d, "min", "max", "")
        extra = [d.name] if d.name else []
        if kind == "int_domain" and d.is_categorical:
            extra.append("categorical")
        return " ".join([text or "any", *(f"({x})" for x in extra)])
    if kind == "bool_domain":
        return "bool"
    return (kind or "").removesuffix("_domain").replace("_", " ")


def _values(values: Sequence[str]) -> str:
    shown = ", ".join(_short(v, 40) for v in values[:_DOMAIN_VALUES])
    more = len(values) - _DOMAIN_VALUES
    return f"{shown} (+{more} more)" if more > 0 else shown


def _comparators(feature: Any) -> str:
    parts = []
    for kind in ("drift_comparator", "skew_comparator"):
        if feature.HasField(kind):
            for field, value in getattr(feature, kind).ListFields():
                parts.append(f"{kind.split('_')[0]} {field.name.replace('_', ' ')} ≤ {_num(value.threshold)}")
    return "; ".join(parts)


def _environments(feature: Any) -> str:
    parts = [f"in {e}" for e in feature.in_environment] + [f"not in {e}" for e in feature.not_in_environment]
    return ", ".join(parts)


# ---------------------------------------------------------------------------
# ExampleAnomalies
# ---------------------------------------------------------------------------


def render_anomalies(uri: str, properties: dict[str, Any] | None = None) -> str:
    """Per split: "no anomalies", or each anomalous feature's severity and
    descriptions; and drift or skew measurements when there are any."""
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    found: list[tuple[str, Any]] = []
    for split, path in _split_dirs(uri, properties):
        binary = fs.join(path, "SchemaDiff.pb")
        if fs.isfile(binary):
            found.append((split, anomalies_pb2.Anomalies.FromString(fs.read_bytes(binary))))
    old = fs.join(uri, "anomalies.pbtxt")  # TFX before 1.0: one text proto for all splits
    if not found and fs.isfile(old):
        found.append(("all splits", text_format.Parse(fs.read_text(old), anomalies_pb2.Anomalies())))
    if not found:
        return ('<p class="cv-error">No anomalies found (expected <code>Split-&lt;name&gt;/SchemaDiff.pb</code>)'
                "</p>" + render_files(uri))
    severity = anomalies_pb2.AnomalyInfo.Severity.Name
    out = ["<h3>Anomalies</h3>"]
    for split, anomalies in found:
        out.append(f"<h4>{_e(split)}</h4>")
        rows = [[f"<code>{_e(name)}</code>", _e(severity(info.severity)), _e(info.short_description),
                 _e(info.description)] for name, info in sorted(anomalies.anomaly_info.items())]
        dataset = anomalies.dataset_anomaly_info
        if dataset.description or dataset.short_description:
            rows.insert(0, ['<span class="cv-muted">(dataset)</span>', _e(severity(dataset.severity)),
                            _e(dataset.short_description), _e(dataset.description)])
        if anomalies.data_missing:
            rows.insert(0, ['<span class="cv-muted">(dataset)</span>', "ERROR", "Data missing",
                            "The split has no data."])
        if rows:
            out.append(f'<p><span class="cv-verdict cv-bad">{len(rows)} '
                       f"anomal{'y' if len(rows) == 1 else 'ies'}</span></p>"
                       + _table(["feature", "severity", "short description", "description"], rows,
                                "cv-anomalies", data_split=split))
        else:
            out.append('<p><span class="cv-verdict cv-ok">no anomalies</span></p>')
        drift = []
        for info in sorted(anomalies.drift_skew_info, key=lambda i: list(i.path.step)):
            for kind, measurements in (("drift", info.drift_measurements), ("skew", info.skew_measurements)):
                for m in measurements:
                    drift.append([f"<code>{_e('.'.join(info.path.step))}</code>", kind,
                                  _e(type(m).Type.Name(m.type)), _n_cell(_num(m.value)),
                                  _e(_num(m.threshold))])
        if drift:
            out.append("<h4>Drift and skew</h4>" + _table(["feature", "kind", "measure", "value", "threshold"], drift))
    return "\n".join(out)


# ---------------------------------------------------------------------------
# ModelEvaluation
# ---------------------------------------------------------------------------


def render_evaluation(uri: str, properties: dict[str, Any] | None = None) -> str:
    """TFMA's output: metrics per slice (candidate, and baseline and diff
    when the model was compared), a bar chart of one metric per slice, the
    overall slice's calibration or precision-recall plot, and the validation
    result."""
    del properties
    names = fs.listdir(uri)
    metric_files = [n for n in names if n.startswith("metrics")]
    if not metric_files:
        return '<p class="cv-error">No TFMA metrics (<code>metrics-*</code>) under this URI.</p>' + render_files(uri)
    metrics_cls, plots_cls, validation_cls = _tfma_classes()
    config = _eval_config(uri)
    baselines = _baseline_names(config)
    slices: dict[tuple, dict[tuple, float]] = {}  # slice sort key -> column -> value
    slice_names: dict[tuple, str] = {}
    columns: set[tuple] = set()
    for name in metric_files:
        for record in _tfrecords(fs.join(uri, name)):
            m = metrics_cls.FromString(record)
            key, label = _slice(m)
            slice_names[key] = label
            values = slices.setdefault(key, {})
            for kv in m.metric_keys_and_values:
                value = _metric_value(kv.value)
                if value is None:
                    continue
                column = _metric_column(kv.key, baselines)
                columns.add(column)
                values[column] = value
            for legacy, value in m.metrics.items():  # deprecated map, by name only
                scalar = _metric_value(value)
                if scalar is not None:
                    column = (legacy, 0, "", "candidate")
                    columns.add(column)
                    values[column] = scalar
    ordered = sorted(columns, key=_column_order)
    labels = _column_labels(ordered)
    order = sorted(slices)
    out = [f'<h3>Evaluation</h3><p class="cv-muted">{len(order)} slice{"s" if len(order) != 1 else ""}, '
           f"{len(ordered)} metric column{'s' if len(ordered) != 1 else ''}.</p>"]
    out.append(_models(config))
    rows = [f'<tr data-slice="{_e(slice_names[k])}"><th>{_e(slice_names[k])}</th>'
            + "".join(_n_cell(_num(slices[k][c])) if c in slices[k] else _none_cell() for c in ordered) + "</tr>"
            for k in order]
    out.append('<table class="cv-table cv-metrics"><thead><tr><th>slice</th>'
               + "".join(f"<th>{_e(labels[c])}</th>" for c in ordered) + "</tr></thead><tbody>"
               + "\n".join(rows) + "</tbody></table>")
    chosen = next((c for c in ordered if c[3] == "candidate" and c[0] != "example_count"), None)
    if chosen is not None:
        shown = [k for k in order if chosen in slices[k]]
        out.append(f"<h4>{_e(labels[chosen])} per slice</h4>"
                   + _hbar_svg([slice_names[k] for k in shown], [slices[k][chosen] for k in shown]))
    out.append(_plots(uri, names, plots_cls, baselines))
    out.append(_validation(uri, names, validation_cls))
    return "\n".join(p for p in out if p)


def _eval_config(uri: str) -> dict[str, Any]:
    path = fs.join(uri, "eval_config.json")
    if not fs.isfile(path):
        return {}
    try:
        return json.loads(fs.read_text(path))
    except ValueError:
        return {}


def _baseline_names(config: dict[str, Any]) -> set[str]:
    specs = config.get("evalConfig", {}).get("modelSpecs", [])
    return {m.get("name", "") for m in specs if isinstance(m, dict) and m.get("isBaseline")}


def _models(config: dict[str, Any]) -> str:
    """Where the candidate and baseline models were, as TFMA recorded it."""
    locations = config.get("modelLocations") or {}
    if not isinstance(locations, dict) or not locations:
        return ""
    baselines = _baseline_names(config)
    rows = [[_e(name or "candidate") + (' <span class="cv-muted">(baseline)</span>'
                                         if name in baselines and name != "baseline" else ""),
             f"<code>{_e(path)}</code>"] for name, path in sorted(locations.items())]
    return _table(["model", "location"], rows, "cv-models")


def _slice(message: Any) -> tuple[tuple, str]:
    """(a sort key putting Overall first and numbers in numeric order, the
    slice's name: `Overall`, `col=value`, `a=1, b=x`)."""
    if message.HasField("cross_slice_key"):
        base, base_name = _slice_key(message.cross_slice_key.baseline_slice_key)
        comp, comp_name = _slice_key(message.cross_slice_key.comparison_slice_key)
        return (1, base, comp), f"{base_name} vs {comp_name}"
    key, name = _slice_key(message.slice_key)
    return (0, key, ()), name


def _slice_key(slice_key: Any) -> tuple[tuple, str]:
    parts, key = [], []
    for single in slice_key.single_slice_keys:
        kind = single.WhichOneof("kind")
        value: Any = getattr(single, kind) if kind else ""
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        text = _num(value) if isinstance(value, float) else str(value)
        parts.append(f"{single.column}={text}")
        key.append((single.column, 0 if isinstance(value, int | float) else 1,
                    value if isinstance(value, int | float) else 0, str(value)))
    return (len(key), tuple(key)), ", ".join(parts) or "Overall"


def _metric_value(value: Any) -> float | None:
    kind = value.WhichOneof("type")
    if kind == "double_value":
        return value.double_value.value
    if kind == "bounded_value":
        return value.bounded_value.value.value
    if kind == "t_distribution_value":
        return value.t_distribution_value.unsampled_value.value
    return None  # curves, matrices, arrays and errors are not one number


def _metric_column(key: Any, baselines: set[str]) -> tuple:
    """(label, weighted, model, role): weighted 0 unset, 1 no, 2 yes; role
    candidate, baseline or diff."""
    label = key.name
    if key.output_name:
        label = f"{key.output_name}: {label}"
    if key.HasField("sub_key"):
        sub = key.sub_key
        for field, text in (("class_id", "class"), ("k", "k"), ("top_k", "top k")):
            if sub.HasField(field):
                label += f" ({text} {getattr(sub, field).value})"
    if key.HasField("aggregation_type"):
        label += f" ({key.aggregation_type.WhichOneof('type') or 'aggregated'})"
    weighted = 0 if not key.HasField("example_weighted") else (2 if key.example_weighted.value else 1)
    role = "diff" if key.is_diff else "baseline" if key.model_name in baselines else "candidate"
    return (label, weighted, "" if role != "candidate" else key.model_name, role)


def _column_order(column: tuple) -> tuple:
    label, weighted, model, role = column
    return (label != "example_count", label, weighted, ("candidate", "baseline", "diff").index(role), model)


def _column_labels(columns: list[tuple]) -> dict[tuple, str]:
    """Column titles, saying weighted/unweighted and the model only where
    two columns would read the same."""
    by_label: dict[str, set[int]] = {}
    models = {c[2] for c in columns if c[3] == "candidate"}
    for c in columns:
        by_label.setdefault(c[0], set()).add(c[1])
    labels = {}
    for c in columns:
        label, weighted, model, role = c
        if len(by_label[label]) > 1 and weighted:
            label += " (weighted)" if weighted == 2 else " (unweighted)"
        if role == "candidate" and len(models) > 1 and model:
            label = f"{model}: {label}"
        labels[c] = label if role == "candidate" else f"{label} [{role}]"
    return labels


def _plots(uri: str, names: list[str], plots_cls: Any, baselines: set[str]) -> str:
    """The overall slice's calibration and precision-recall curves, when TFMA
    wrote any (other slices' are left to TFMA's own viewer)."""
    charts = []
    for name in (n for n in names if n.startswith("plots")):
        for record in _tfrecords(fs.join(uri, name)):
            p = plots_cls.FromString(record)
            if _slice(p)[1] != "Overall":
                continue
            data = [(kv.key.model_name, kv.value) for kv in p.plot_keys_and_values]
            if p.HasField("plot_data"):
                data.append(("", p.plot_data))
            data += [("", v) for _, v in sorted(p.plots.items())]
            for model, plot in data:
                if model in baselines:
                    continue
                who = f" ({model})" if model else ""
                buckets = [b for b in plot.calibration_histogram_buckets.buckets if b.num_weighted_examples.value > 0]
                if buckets:
                    points = [(b.total_weighted_refined_prediction.value / b.num_weighted_examples.value,
                               b.total_weighted_label.value / b.num_weighted_examples.value) for b in buckets]
                    charts.append(f"<h4>Calibration{_e(who)}</h4>"
                                  + _line_svg(points, "mean prediction", "mean label", diagonal=True))
                matrices = list(plot.confusion_matrix_at_thresholds.matrices)
                if matrices:
                    points = [(m.recall, m.precision) for m in sorted(matrices, key=lambda m: m.threshold)]
                    charts.append(f"<h4>Precision-recall{_e(who)}</h4>"
                                  + _line_svg(points, "recall", "precision", diagonal=False))
    return "".join(charts)


def _validation(uri: str, names: list[str], validation_cls: Any) -> str:
    files = [n for n in names if n.startswith("validations")]
    if not files:
        return '<h4>Validation</h4><p class="cv-muted">No validation result.</p>'
    results = [validation_cls.FromString(r) for n in files for r in _tfrecords(fs.join(uri, n))]
    if not results:
        return '<h4>Validation</h4><p class="cv-muted">No validation result.</p>'
    ok = all(r.validation_ok for r in results)
    out = ["<h4>Validation</h4>",
           '<p><span class="cv-verdict cv-ok">validation OK</span></p>' if ok
           else '<p><span class="cv-verdict cv-bad">validation failed</span></p>']
    rows = []
    for result in results:
        for per_slice in result.metric_validations_per_slice:
            where = _slice(per_slice)[1]
            for failure in per_slice.failures:
                value = _metric_value(failure.metric_value)
                rows.append([_e(where), _e(_metric_column(failure.metric_key, set())[0]),
                             _e("" if value is None else _num(value)), _e(_one_line(failure.metric_threshold)),
                             _e(failure.message)])
        for missing in result.missing_slices:
            rows.append([_e(_one_line(missing) or "Overall"), "", "", "", "slice missing from the evaluation data"])
        for cross in result.missing_cross_slices:
            rows.append([_e(_one_line(cross)), "", "", "", "cross slice missing from the evaluation data"])
        if result.missing_thresholds:
            out.append('<p class="cv-muted">No thresholds were configured: nothing was validated.</p>')
        if result.rubber_stamp:
            out.append('<p class="cv-muted">No baseline model: change thresholds were not checked.</p>')
    if rows:
        out.append(_table(["slice", "metric", "value", "threshold", "message"], rows, "cv-failures"))
    return "".join(out)


def _one_line(message: Any) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(message, as_one_line=True)


@functools.cache
def _tfma_classes() -> tuple[Any, Any, Any]:
    """MetricsForSlice, PlotsForSlice and ValidationResult message classes."""
    real = "tensorflow_model_analysis.proto.validation_result_pb2"
    if real not in sys.modules:
        try:
            return _tfma_classes_from_sources()
        except Exception:  # noqa: BLE001 - generated code laid out otherwise: pay for TFMA's import
            pass
    from tensorflow_model_analysis.proto import metrics_for_slice_pb2, validation_result_pb2

    return (metrics_for_slice_pb2.MetricsForSlice, metrics_for_slice_pb2.PlotsForSlice,
            validation_result_pb2.ValidationResult)


def _tfma_classes_from_sources() -> tuple[Any, Any, Any]:
    """The classes from TFMA's proto descriptors, read out of its generated
    `*_pb2.py` files without running them (running them would import TFMA's
    package, hence TensorFlow), into a pool of their own, so they never clash
    with TFMA's classes if TFMA is imported later in the process."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    spec = importlib.util.find_spec("tensorflow_model_analysis")  # finds it without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("tensorflow_model_analysis is not installed")
    proto_dir = pathlib.Path(list(spec.submodule_search_locations)[0]) / "proto"
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()
    for name in ("config", "metrics_for_slice", "validation_result"):
        serialized = _serialized_descriptor(proto_dir / f"{name}_pb2.py")
        for dep in descriptor_pb2.FileDescriptorProto.FromString(serialized).dependency:
            if dep.startswith("google/protobuf/") and dep not in added:
                module = importlib.import_module("google.protobuf." + dep.rsplit("/", 1)[1].removesuffix(".proto")
                                                 + "_pb2")
                pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
                added.add(dep)
        pool.AddSerializedFile(serialized)
    get = message_factory.GetMessageClass
    return (get(pool.FindMessageTypeByName("tensorflow_model_analysis.MetricsForSlice")),
            get(pool.FindMessageTypeByName("tensorflow_model_analysis.PlotsForSlice")),
            get(pool.FindMessageTypeByName("tensorflow_model_analysis.ValidationResult")))


def _serialized_descriptor(path: pathlib.Path) -> bytes:
    """The bytes a generated module hands to `AddSerializedFile`."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "AddSerializedFile" and node.args):
            value = ast.literal_eval(node.args[0])
            if isinstance(value, bytes):
                return value
    raise ValueError(f"{path}: no serialized descriptor")


# ---------------------------------------------------------------------------
# ModelBlessing and PushedModel
# ---------------------------------------------------------------------------


def render_blessing(uri: str, properties: dict[str, Any], link: Link | None = None) -> str:
    """BLESSED or NOT_BLESSED (the `blessed` property, else the marker file
    under `uri`), and the candidate and baseline models compared."""
    blessed = properties.get("blessed")
    if blessed is None and uri and fs.exists(uri):
        if fs.isfile(fs.join(uri, "BLESSED")):
            blessed = 1
        elif fs.isfile(fs.join(uri, "NOT_BLESSED")):
            blessed = 0
    if blessed is None:
        verdict = '<span class="cv-verdict cv-unknown">verdict unknown</span>'
    elif int(blessed):
        verdict = '<span class="cv-verdict cv-ok">BLESSED</span>'
    else:
        verdict = '<span class="cv-verdict cv-bad">NOT_BLESSED</span>'
    rows = [["current model", _model_ref(properties, "current_model", link)]]
    baseline = _model_ref(properties, "baseline_model", link)
    rows.append(["baseline model", baseline or '<span class="cv-muted">none: no blessed model to compare with '
                 "(change thresholds were not checked)</span>"])
    return f"<h3>Blessing</h3><p>{verdict}</p>" + _table(["", "model"], rows, "cv-blessing")


def _model_ref(properties: dict[str, Any], prefix: str, link: Link | None) -> str:
    model_id, model_uri = properties.get(f"{prefix}_id"), properties.get(prefix)
    parts = []
    if model_id is not None:
        text = f"model {_e(model_id)}"
        parts.append(f'<a href="{_e(link(int(model_id)))}">{text}</a>' if link is not None else text)
    if model_uri:
        parts.append(f"<code>{_e(model_uri)}</code>")
    return " ".join(parts)


def render_pushed_model(properties: dict[str, Any]) -> str:
    """Whether the model was pushed, where and as which version."""
    pushed = properties.get("pushed")
    if pushed is None:
        verdict = '<span class="cv-verdict cv-unknown">push unknown</span>'
    elif int(pushed):
        verdict = '<span class="cv-verdict cv-ok">pushed</span>'
    else:
        verdict = '<span class="cv-verdict cv-bad">not pushed</span>'
    rows = [[name, f"<code>{_e(properties[key])}</code>" if key in properties else _none_cell()]
            for name, key in (("destination", "pushed_destination"), ("version", "pushed_version"))]
    return f"<h3>Push</h3><p>{verdict}</p>" + _table(["", ""], rows, "cv-push")


_FILE_RENDERERS: dict[str, Callable[[str, dict[str, Any]], str]] = {
    "ExampleStatistics": render_statistics,
    "Schema": render_schema,
    "ExampleAnomalies": render_anomalies,
    "ModelEvaluation": render_evaluation,
}


# ---------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _num(value: float | int) -> str:
    """Integers in full with thousands separators, other numbers to 4
    significant digits."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if value.is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.4g}"


def _pct(part: float, whole: float) -> str:
    """A share to 3 significant digits, never rounded to 0% or 100% when it is neither."""
    if not whole:
        return "–"
    if part == 0 or part == whole:
        return "0%" if part == 0 else "100%"
    share = 100.0 * part / whole
    return ">99.9%" if share > 99.9 else "<0.001%" if share < 0.001 else f"{share:.3g}%"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    return f"{n} B"


def _n_cell(text: str) -> str:
    return f'<td class="cv-n">{_e(text)}</td>'


def _none_cell() -> str:
    return '<td class="cv-none">—</td>'


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "", data_split: str | None = None) -> str:
    """A table of cells already HTML (a cell given as `<td...>` is kept as is)."""
    attrs = f' data-split="{_e(data_split)}"' if data_split is not None else ""
    body = "\n".join("<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in row) + "</tr>"
                     for row in rows)
    header = "".join(f"<th>{_e(h)}</th>" for h in head)
    return f'<table class="cv-table {cls}"{attrs}><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>'


def _split_dirs(uri: str, properties: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(split, path) of the `Split-<name>` directories, in the order of the
    `split_names` property, else train and eval first; others after by name."""
    found = {n[len("Split-"):]: fs.join(uri, n) for n in fs.listdir(uri) if n.startswith("Split-")}
    declared: list[str] = []
    raw = (properties or {}).get("split_names")
    if isinstance(raw, str):
        try:
            declared = [str(s) for s in json.loads(raw)]
        except ValueError:
            declared = []
    order = [s for s in [*declared, "train", "eval"] if s in found]
    order = list(dict.fromkeys(order)) + sorted(s for s in found if s not in order)
    return [(s, found[s]) for s in order]


def _tfrecords(path: str) -> list[bytes]:
    from conveyor.components.examples_io import read_tfrecords

    with fs.open(path, "rb") as f:
        return list(read_tfrecords(f))


def _fmt(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".") if x != int(x) else str(int(x))


def _vbar_svg(values: Sequence[float], titles: Sequence[str], width: int = 120, height: int = 32) -> str:
    """A histogram: one bar per bucket, heights relative to the largest."""
    top = max(values) or 1.0
    step = width / len(values)
    bars = []
    for i, (v, title) in enumerate(zip(values, titles, strict=True)):
        h = max(height * v / top, 0.5 if v > 0 else 0.0)
        bars.append(f'<rect class="cv-bar" x="{_fmt(i * step)}" y="{_fmt(height - h)}" '
                    f'width="{_fmt(max(step - 1, 1))}" height="{_fmt(h)}"><title>{_e(title)}</title></rect>')
    return (f'<svg class="cv-chart cv-hist" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="histogram">' + "".join(bars) + "</svg>")


def _hbar_svg(labels: Sequence[str], values: Sequence[float], width: int = 420, label_width: int = 140) -> str:
    """Horizontal bars, one per label, lengths relative to the largest value
    (values below zero drawn from zero as zero-length)."""
    if not values:
        return ""
    row = 14
    height = row * len(values)
    top = max(max(values), 0.0) or 1.0
    span = width - label_width - 50
    items = []
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        y = i * row
        length = max(span * max(v, 0.0) / top, 0.0)
        text = f'<text x="{label_width - 4}" y="{y + 10}" text-anchor="end">{_e(_short(label, 28))}</text>' \
            if label_width else ""
        items.append(f'{text}<rect class="cv-bar" x="{label_width}" y="{y + 2}" width="{_fmt(length)}" height="10">'
                     f"<title>{_e(label)}: {_e(_num(v))}</title></rect>"
                     f'<text x="{_fmt(label_width + length + 3)}" y="{y + 10}">{_e(_num(v))}</text>')
    return (f'<svg class="cv-chart cv-hbar" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="bar chart">' + "".join(items) + "</svg>")


def _line_svg(points: Sequence[tuple[float, float]], x_label: str, y_label: str, diagonal: bool) -> str:
    """A line through (x, y) points on axes from 0 to 1 (grown to fit larger
    values), with the y = x line when asked."""
    left, bottom, edge, side = 34, 26, 8, 180  # margins and the plot's side, in pixels
    width, height = left + side + edge, edge + side + bottom
    top = max([1.0] + [max(x, y) for x, y in points])

    def at(x: float, y: float) -> str:
        x, y = min(max(x, 0.0), top), min(max(y, 0.0), top)  # negative values (logits) stay on the axes
        return f"{_fmt(left + side * x / top)},{_fmt(edge + side - side * y / top)}"

    path = " ".join(at(x, y) for x, y in points)
    ref = f'<polyline class="cv-ref" points="{at(0, 0)} {at(top, top)}"/>' if diagonal else ""
    return (f'<svg class="cv-chart cv-line-chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="{_e(y_label)} by {_e(x_label)}">'
            f'<polyline class="cv-axis" fill="none" points="{at(0, top)} {at(0, 0)} {at(top, 0)}"/>{ref}'
            f'<polyline class="cv-line" points="{path}"/>'
            f'<text x="{left - 3}" y="{edge + side + 4}" text-anchor="end">0</text>'
            f'<text x="{left - 3}" y="{edge + 8}" text-anchor="end">{_e(_num(top))}</text>'
            f'<text x="{left + side}" y="{edge + side + 12}" text-anchor="end">{_e(_num(top))}</text>'
            f'<text x="{left + side // 2}" y="{height - 4}" text-anchor="middle">{_e(x_label)}</text>'
            f'<text x="12" y="{edge + side // 2}" transform="rotate(-90 12 {edge + side // 2})" '
            f'text-anchor="middle">{_e(y_label)}</text></svg>')
