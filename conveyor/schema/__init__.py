"""Reading, inferring, curating and comparing tensorflow_metadata schemas.

A schema says what data a pipeline expects: each feature's type, how often it
is present, how many values it has and which values are valid. SchemaGen infers
one from statistics; you then curate it (which features are required, which
values are valid, which features serving requests lack) and import it back with
ImportSchemaGen:

    from conveyor import schema as schema_lib

    s = schema_lib.load("pipeline_root/schema_gen/schema/7")
    schema_lib.set_environments(s, ["TRAINING", "SERVING"], not_in={"SERVING": ["tips"]})
    schema_lib.set_domain(s, "trip_start_hour", min=0, max=23)
    schema_lib.save(s, "schema/schema.pbtxt")
    print("\\n".join(schema_lib.diff(schema_lib.load("old.pbtxt"), s)))

Nothing heavy is imported with this module: protos are imported when a
function needs them, and TensorFlow Data Validation only by `infer`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from conveyor import fs
from conveyor.errors import ConveyorError, closest

if TYPE_CHECKING:
    from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2

__all__ = [
    "FILE_NAME",
    "SchemaError",
    "load",
    "parse",
    "save",
    "load_statistics",
    "infer",
    "feature",
    "set_environments",
    "set_domain",
    "set_drift_comparator",
    "set_skew_comparator",
    "set_required",
    "diff",
    "show",
]

FILE_NAME = "schema.pbtxt"
"""The file a Schema artifact holds (TFX's name)."""


class SchemaError(ConveyorError, ValueError):
    """A schema file that cannot be read, or a curation that does not fit the schema."""


# -- files ---------------------------------------------------------------------


def _schema_file(path: str) -> str:
    # A Schema artifact's directory stands for the schema.pbtxt inside it.
    return fs.join(path, FILE_NAME) if fs.isdir(path) else path


def parse(text: str, source: str = "<string>") -> schema_pb2.Schema:
    """A Schema from its text format; SchemaError names `source`, the line and
    column and the parser's complaint when it does not parse."""
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = schema_pb2.Schema()
    try:
        text_format.Parse(text, schema)
    except text_format.ParseError as e:
        line, column = e.GetLine(), e.GetColumn()
        message = str(e)
        # ParseError's text starts with "line:column : "; keep just the complaint.
        prefix = f"{line}:{column} : "
        if message.startswith(prefix):
            message = message[len(prefix):]
        message = message.rstrip(".") + "." + _field_hint(message)
        where = f"{source}, line {line}" + (f", column {column}" if column else "")
        raise SchemaError(
            f"{where}: not a valid tensorflow_metadata Schema in text format: {message} "
            f"Fix that line (see https://github.com/tensorflow/metadata/blob/master/"
            f"tensorflow_metadata/proto/v0/schema.proto for the fields), or regenerate the "
            f"file with SchemaGen."
        ) from e
    return schema


def _field_hint(message: str) -> str:
    """' Did you mean X?' for a misspelt field or enum value."""
    import re

    from tensorflow_metadata.proto.v0 import schema_pb2

    pool = schema_pb2.DESCRIPTOR.pool
    m = re.search(r'Message type "([\w.]+)" has no field named "(\w+)"', message)
    if m:
        try:
            names = [f.name for f in pool.FindMessageTypeByName(m.group(1)).fields]
        except KeyError:
            return ""
        return closest(m.group(2), names)
    m = re.search(r'Enum type "([\w.]+)" has no value named (\w+)', message)
    if m:
        try:
            names = [v.name for v in pool.FindEnumTypeByName(m.group(1)).values]
        except KeyError:
            return ""
        return closest(m.group(2), names)
    return ""


def load(path: str) -> schema_pb2.Schema:
    """The schema in a `schema.pbtxt` file, or in the `schema.pbtxt` of a
    Schema artifact directory."""
    file = _schema_file(os.fspath(path))
    if not fs.isfile(file):
        in_dir = fs.isdir(fs.dirname(file) or ".") and fs.basename(file) == FILE_NAME
        what = f"the directory has no {FILE_NAME}" if in_dir else "no such file"
        raise SchemaError(
            f"Schema file {file} cannot be read ({what}). Pass the path of a schema.pbtxt "
            f"or of a Schema artifact directory."
        )
    try:
        text = fs.read_text(file)
    except UnicodeDecodeError as e:
        raise SchemaError(
            f"Schema file {file} is not UTF-8 text (byte {e.start}); a schema.pbtxt is a text-format "
            f"Schema proto. Convert a binary schema with conveyor.schema.save()."
        ) from e
    return parse(text, file)


def save(schema: schema_pb2.Schema, path: str) -> str:
    """Write `schema` in text format to `path`: a `*.pbtxt` file, or else a
    directory (e.g. a Schema artifact's) to hold schema.pbtxt. Makes missing
    directories. Returns the file written."""
    from google.protobuf import text_format

    path = os.fspath(path)
    file = path if path.endswith(".pbtxt") and not fs.isdir(path) else fs.join(path, FILE_NAME)
    fs.makedirs(fs.dirname(fs.abspath(file)))
    # Replaced atomically (or, on an object store, visible only when whole).
    fs.write_text(file, text_format.MessageToString(schema))
    return file


def load_statistics(path: str) -> statistics_pb2.DatasetFeatureStatisticsList:
    """A DatasetFeatureStatisticsList from a binary file (StatisticsGen's
    `Split-<name>/FeatureStats.pb`) or from such a split directory."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    path = os.fspath(path)
    file = fs.join(path, "FeatureStats.pb") if fs.isdir(path) else path
    if not fs.isfile(file):
        raise SchemaError(
            f"Statistics file {file} does not exist. Pass a FeatureStats.pb written by "
            f"StatisticsGen (its Split-<name>/FeatureStats.pb)."
        )
    stats = statistics_pb2.DatasetFeatureStatisticsList()
    data = fs.read_bytes(file)
    try:
        stats.ParseFromString(data)
    except Exception as e:  # protobuf raises DecodeError, a plain Exception subclass
        raise SchemaError(
            f"Statistics file {file} is not a binary DatasetFeatureStatisticsList ({e}). "
            f"Regenerate it with StatisticsGen."
        ) from e
    if not stats.datasets:
        raise SchemaError(
            f"Statistics file {file} holds no dataset statistics. Regenerate it with StatisticsGen."
        )
    return stats


def infer(
    statistics: Any,
    infer_feature_shape: bool = True,
    max_string_domain_size: int = 100,
) -> schema_pb2.Schema:
    """A schema inferred by TFDV from statistics: a DatasetFeatureStatisticsList
    or the path of a FeatureStats.pb, or a list of them (e.g. one per split),
    merged in order as TFX's SchemaGen does.

    With `infer_feature_shape`, a feature present in every example with the same
    number of values gets a fixed `shape` (dense in Transform and training);
    otherwise it gets a `value_count` (sparse/ragged)."""
    import tensorflow_data_validation as tfdv

    items = list(statistics) if isinstance(statistics, (list, tuple)) else [statistics]
    if not items:
        raise SchemaError("infer() needs statistics to infer from; got an empty list.")
    schema = None
    for item in items:
        stats = load_statistics(item) if isinstance(item, (str, os.PathLike)) else item
        if schema is None:
            schema = tfdv.infer_schema(
                stats, infer_feature_shape=infer_feature_shape, max_string_domain_size=max_string_domain_size
            )
        else:
            schema = tfdv.update_schema(
                schema, stats, infer_feature_shape=infer_feature_shape,
                max_string_domain_size=max_string_domain_size,
            )
    return schema


# -- curation ------------------------------------------------------------------


def feature(schema: schema_pb2.Schema, name: str) -> schema_pb2.Feature:
    """The feature named `name`; SchemaError with the closest name otherwise."""
    for f in schema.feature:
        if f.name == name:
            return f
    names = [f.name for f in schema.feature]
    raise SchemaError(f"The schema has no feature {name!r}.{closest(name, names)} Its features: {names}.")


def set_environments(
    schema: schema_pb2.Schema,
    environments: Sequence[str] = ("TRAINING", "SERVING"),
    *,
    not_in: Mapping[str, Sequence[str]] | None = None,
) -> schema_pb2.Schema:
    """Declare the environments the data comes from (`default_environment`),
    and for each environment the features it lacks (`not_in_environment`), so
    that validating serving data does not flag the missing label:

        set_environments(schema, ["TRAINING", "SERVING"], not_in={"SERVING": ["tips"]})

    Replaces earlier environment settings. Changes `schema` in place and returns it."""
    environments = list(environments)
    if not environments or any(not isinstance(e, str) or not e for e in environments):
        raise SchemaError(f"environments must be non-empty names such as 'TRAINING'; got {environments!r}.")
    not_in = dict(not_in or {})
    for env, names in not_in.items():
        if env not in environments:
            raise SchemaError(
                f"not_in names the environment {env!r}, which is not one of the environments "
                f"{environments}.{closest(env, environments)} Add it to environments."
            )
        if isinstance(names, str):
            raise SchemaError(f"not_in[{env!r}] must be a list of feature names, got the string {names!r}.")
        for name in names:
            feature(schema, name)  # raises for an unknown name
    del schema.default_environment[:]
    schema.default_environment.extend(environments)
    for f in schema.feature:
        del f.not_in_environment[:]
        del f.in_environment[:]
        f.not_in_environment.extend(env for env in environments if f.name in set(not_in.get(env, ())))
    return schema


def set_drift_comparator(
    schema: schema_pb2.Schema, name: str, *, infinity_norm: float | None = None,
    jensen_shannon_divergence: float | None = None,
) -> schema_pb2.Schema:
    """Flag drift of feature `name` between consecutive spans (TFX's
    `drift_comparator`): an anomaly when the L-infinity distance of its
    value distribution (categorical features) or the Jensen-Shannon
    divergence of its histogram (numeric ones) exceeds the threshold.
    ExampleValidator checks it given the previous span's statistics."""
    _set_comparator(feature(schema, name).drift_comparator, "drift", infinity_norm, jensen_shannon_divergence)
    return schema


def set_skew_comparator(
    schema: schema_pb2.Schema, name: str, *, infinity_norm: float | None = None,
    jensen_shannon_divergence: float | None = None,
) -> schema_pb2.Schema:
    """Flag skew of feature `name` between training and serving data (TFX's
    `skew_comparator`), measured as for `set_drift_comparator`.
    ExampleValidator checks it given serving statistics."""
    _set_comparator(feature(schema, name).skew_comparator, "skew", infinity_norm, jensen_shannon_divergence)
    return schema


def _set_comparator(comparator: Any, kind: str, infinity_norm: float | None, jsd: float | None) -> None:
    if infinity_norm is None and jsd is None:
        raise SchemaError(f"set_{kind}_comparator needs infinity_norm= and/or jensen_shannon_divergence=, "
                          f"thresholds between 0 and 1.")
    for label, value in (("infinity_norm", infinity_norm), ("jensen_shannon_divergence", jsd)):
        if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 1):
            raise SchemaError(f"{kind} comparator {label} must be a number between 0 and 1, got {value!r}.")
    comparator.Clear()
    if infinity_norm is not None:
        comparator.infinity_norm.threshold = float(infinity_norm)
    if jsd is not None:
        comparator.jensen_shannon_divergence.threshold = float(jsd)


def set_domain(
    schema: schema_pb2.Schema,
    name: str,
    *,
    values: Sequence[str] | None = None,
    min: float | None = None,  # noqa: A002 - the natural name
    max: float | None = None,  # noqa: A002
) -> schema_pb2.Schema:
    """Restrict the valid values of a feature: `values=[...]` for a string
    feature, `min=`/`max=` for a numeric one. Replaces its earlier domain
    (a named top-level domain it used is dropped if nothing else uses it).
    Changes `schema` in place and returns it."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    f = feature(schema, name)
    if values is None and min is None and max is None:
        raise SchemaError(f"set_domain({name!r}) needs values=[...] or min=/max=.")
    if values is not None and (min is not None or max is not None):
        raise SchemaError(f"set_domain({name!r}): give either values=[...] or min=/max=, not both.")
    type_name = schema_pb2.FeatureType.Name(f.type)
    if values is not None:
        if isinstance(values, str):
            raise SchemaError(
                f"set_domain({name!r}): values must be a list of strings, got the string {values!r}."
            )
        if f.type != schema_pb2.BYTES:
            raise SchemaError(
                f"set_domain({name!r}, values=...): a list of values is a string domain, but "
                f"{name!r} is {type_name}. Use min=/max= for a numeric feature."
            )
        domain_values = [str(v) for v in values]
    elif min is not None and max is not None and min > max:
        raise SchemaError(f"set_domain({name!r}): min {min} is greater than max {max}.")
    elif f.type == schema_pb2.BYTES:
        raise SchemaError(f"set_domain({name!r}): {name!r} is a string (BYTES) feature; use values=[...].")
    elif f.type == schema_pb2.INT:
        for bound in (min, max):
            if bound is not None and float(bound) != int(bound):
                raise SchemaError(
                    f"set_domain({name!r}): {name!r} is INT, so min/max must be integers; got {bound}."
                )

    old_reference = f.domain if f.WhichOneof("domain_info") == "domain" else ""
    if values is not None:
        f.string_domain.Clear()
        f.string_domain.value.extend(domain_values)
    elif f.type == schema_pb2.INT:
        f.int_domain.Clear()
        if min is not None:
            f.int_domain.min = int(min)
        if max is not None:
            f.int_domain.max = int(max)
    else:
        f.float_domain.Clear()
        if min is not None:
            f.float_domain.min = float(min)
        if max is not None:
            f.float_domain.max = float(max)
    if old_reference and not any(g.domain == old_reference for g in schema.feature):
        kept = [d for d in schema.string_domain if d.name != old_reference]
        del schema.string_domain[:]
        schema.string_domain.extend(kept)
    return schema


def set_required(schema: schema_pb2.Schema, name: str, required: bool = True) -> schema_pb2.Schema:
    """Make a feature required in every example (presence min_fraction 1), or
    optional. An optional feature cannot keep a fixed `shape` (dense parsing
    needs every example to have it), so its shape becomes the equivalent
    `value_count`. Changes `schema` in place and returns it."""
    f = feature(schema, name)
    if required:
        f.presence.min_fraction = 1.0
        f.presence.min_count = max(f.presence.min_count, 1)
        return schema
    f.presence.ClearField("min_fraction")
    if f.HasField("shape"):
        count = 1
        for dim in f.shape.dim:
            count *= dim.size
        f.ClearField("shape")
        f.value_count.min = count
        f.value_count.max = count
    return schema


# -- reading a schema ----------------------------------------------------------


def _type(f: Any) -> str:
    from tensorflow_metadata.proto.v0 import schema_pb2

    return schema_pb2.FeatureType.Name(f.type)


def _presence(f: Any) -> str:
    if not f.HasField("presence"):
        return "-"
    p = f.presence
    if p.min_fraction >= 1.0:
        return "required"
    parts = ["optional"]
    if p.min_fraction:
        parts.append(f"min_fraction={p.min_fraction:g}")
    if p.min_count:
        parts.append(f"min_count={p.min_count}")
    return " ".join(parts) if len(parts) > 1 else "optional"


def _presence_detail(f: Any) -> str:
    return f"min_fraction={f.presence.min_fraction:g} min_count={f.presence.min_count}"


def _valency(f: Any) -> str:
    if f.HasField("shape"):
        return "shape [" + ", ".join(str(d.size) for d in f.shape.dim) + "]"
    if f.HasField("value_count"):
        lo, hi = f.value_count.min, f.value_count.max
        if lo == hi and lo:
            return "single" if lo == 1 else f"{lo} values"
        return f"{lo or 0}..{hi if hi else 'any'} values"
    return "any"


def _domain_values(schema: Any, f: Any) -> tuple[str, Any]:
    """(kind, description) of a feature's domain, resolving named domains."""
    kind = f.WhichOneof("domain_info")
    if kind is None:
        return "", None
    if kind == "domain":
        for d in schema.string_domain:
            if d.name == f.domain:
                return "string", list(d.value)
        return "string", f"(missing domain {f.domain!r})"
    if kind == "string_domain":
        return "string", list(f.string_domain.value)
    if kind == "int_domain":
        d = f.int_domain
        return "int", (d.min if d.HasField("min") else None, d.max if d.HasField("max") else None)
    if kind == "float_domain":
        d = f.float_domain
        return "float", (d.min if d.HasField("min") else None, d.max if d.HasField("max") else None)
    return kind, str(getattr(f, kind)).strip().replace("\n", " ") or kind


def _domain_text(schema: Any, f: Any) -> str:
    kind, value = _domain_values(schema, f)
    if not kind:
        return "-"
    if kind == "string" and isinstance(value, list):
        label = f"{f.domain}: " if f.WhichOneof("domain_info") == "domain" else ""
        shown = ", ".join(repr(_clip(v, 20)) for v in value[:3]) + (", ..." if len(value) > 3 else "")
        return f"{label}{len(value)} values ({shown})"
    if kind in ("int", "float"):
        lo, hi = value
        return f"[{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}]"
    return f"{kind}: {value}"


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _environments(f: Any) -> str:
    parts = [f"in {e}" for e in f.in_environment] + [f"not in {e}" for e in f.not_in_environment]
    return ", ".join(parts) or "-"


def show(schema: schema_pb2.Schema) -> str:
    """A readable table of the schema's features: name, type, presence,
    valency or shape, domain and environments."""
    header = ("feature", "type", "presence", "values", "domain", "environments")
    rows = [
        (f.name + (" (deprecated)" if _deprecated(f) else ""), _type(f), _presence(f), _valency(f),
         _domain_text(schema, f), _environments(f))
        for f in schema.feature
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    out.extend(line(r) for r in rows)
    footer = [f"{len(rows)} features"]
    if schema.default_environment:
        footer.append("environments: " + ", ".join(schema.default_environment))
    if schema.sparse_feature:
        footer.append("sparse features: " + ", ".join(s.name for s in schema.sparse_feature))
    out.append("")
    out.append("; ".join(footer))
    return "\n".join(out)


def _deprecated(f: Any) -> bool:
    from tensorflow_metadata.proto.v0 import schema_pb2

    return f.deprecated or f.lifecycle_stage == schema_pb2.DEPRECATED


# -- comparing -----------------------------------------------------------------


def _domain_change(name: str, a_schema: Any, a: Any, b_schema: Any, b: Any) -> list[str]:
    ka, va = _domain_values(a_schema, a)
    kb, vb = _domain_values(b_schema, b)
    if (ka, va) == (kb, vb):
        return []
    if ka == kb == "string" and isinstance(va, list) and isinstance(vb, list):
        added = [v for v in vb if v not in set(va)]
        removed = [v for v in va if v not in set(vb)]
        parts = []
        if added:
            parts.append(f"gained {len(added)} value(s) {_some(added)}")
        if removed:
            parts.append(f"lost {len(removed)} value(s) {_some(removed)}")
        return [f"{name}: string domain " + " and ".join(parts or ["values reordered"])]
    return [f"{name}: domain {_domain_text(a_schema, a)} -> {_domain_text(b_schema, b)}"]


def _some(values: list[str], n: int = 5) -> str:
    return "[" + ", ".join(repr(v) for v in values[:n]) + (", ..." if len(values) > n else "") + "]"


def _feature_changes(a_schema: Any, a: Any, b_schema: Any, b: Any) -> list[str]:
    name = a.name
    changes = []
    if a.type != b.type:
        changes.append(f"{name}: type {_type(a)} -> {_type(b)}")
    if _presence(a) != _presence(b):
        changes.append(f"{name}: presence {_presence(a)} -> {_presence(b)}")
    elif a.presence != b.presence:
        changes.append(f"{name}: presence {_presence_detail(a)} -> {_presence_detail(b)}")
    if _valency(a) != _valency(b):
        changes.append(f"{name}: values {_valency(a)} -> {_valency(b)}")
    changes += _domain_change(name, a_schema, a, b_schema, b)
    if _environments(a) != _environments(b):
        changes.append(f"{name}: environments {_environments(a)} -> {_environments(b)}")
    if _deprecated(a) != _deprecated(b):
        changes.append(f"{name}: " + ("deprecated" if _deprecated(b) else "no longer deprecated"))
    if not changes:
        # Something this summary does not cover (e.g. drift_comparator): still a change.
        rest_a, rest_b = _strip_summarised(a), _strip_summarised(b)
        if rest_a != rest_b:
            fields = sorted(
                {fd.name for fd, _ in rest_a.ListFields()} ^ {fd.name for fd, _ in rest_b.ListFields()}
                | {fd.name for fd, v in rest_a.ListFields() if getattr(rest_b, fd.name) != v}
            )
            changes.append(f"{name}: changed {', '.join(fields)}")
    return changes


_SUMMARISED_FEATURE_FIELDS = (
    "type", "presence", "shape", "value_count", "domain", "string_domain", "int_domain", "float_domain",
    "in_environment", "not_in_environment", "deprecated", "lifecycle_stage",
)


def _strip_summarised(f: Any) -> Any:
    copy = type(f)()
    copy.CopyFrom(f)
    for field in _SUMMARISED_FEATURE_FIELDS:
        copy.ClearField(field)
    return copy


def _named_domains(schema: Any) -> dict[str, list[str]]:
    return {d.name: list(d.value) for d in schema.string_domain}


def diff(a: schema_pb2.Schema, b: schema_pb2.Schema) -> list[str]:
    """Human-readable changes from schema `a` to schema `b`: features added or
    removed; type, presence, valency/shape, domain, environment changes of
    each feature; schema-level environments. Empty when they are the same."""
    changes: list[str] = []
    fa = {f.name: f for f in a.feature}
    fb = {f.name: f for f in b.feature}
    for name in fa:
        if name not in fb:
            changes.append(f"{name}: removed ({_type(fa[name])})")
    for name in fb:
        if name not in fa:
            changes.append(f"{name}: added ({_type(fb[name])}, {_presence(fb[name])}, {_valency(fb[name])})")
    for name in fa:
        if name in fb:
            changes += _feature_changes(a, fa[name], b, fb[name])
    if list(a.default_environment) != list(b.default_environment):
        before, after = list(a.default_environment) or "none", list(b.default_environment) or "none"
        changes.append(f"environments: {before} -> {after}")
    sa = {s.name: s for s in a.sparse_feature}
    sb = {s.name: s for s in b.sparse_feature}
    for name in sorted(set(sa) | set(sb)):
        if name not in sb:
            changes.append(f"sparse feature {name}: removed")
        elif name not in sa:
            changes.append(f"sparse feature {name}: added")
        elif sa[name] != sb[name]:
            changes.append(f"sparse feature {name}: changed")
    if not changes:
        # Anything else (feature order, unused named domains, dataset constraints...).
        rest_a, rest_b = type(a)(), type(b)()
        rest_a.CopyFrom(a)
        rest_b.CopyFrom(b)
        for s in (rest_a, rest_b):
            for field in ("feature", "sparse_feature", "default_environment", "string_domain"):
                s.ClearField(field)
        if rest_a != rest_b:
            changes.append("schema-level settings changed")
        elif [f.name for f in a.feature] != [f.name for f in b.feature]:
            changes.append("feature order changed")
        elif _named_domains(a) != _named_domains(b):
            changes.append("unused named string domains changed")
    return changes
