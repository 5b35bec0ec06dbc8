"""The UI's artifact renderers on real files: a TFX 1.16 taxi run
(../shared/data/tfx_taxi_store) and a Conveyor taxi run (tests/testdata/ui/
conveyor_taxi, see its README), read back as HTML tables."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from html.parser import HTMLParser

import pytest
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from conveyor.components.examples_io import frame_tfrecords
from conveyor.ui import render

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFX_STORE = os.path.join(os.path.dirname(REPO), "shared", "data", "tfx_taxi_store")
TFX = os.path.join(TFX_STORE, "root")
CONVEYOR = os.path.join(REPO, "tests", "testdata", "ui", "conveyor_taxi")

TAXI_FEATURES = {
    "company", "payment_type", "dropoff_census_tract", "dropoff_community_area", "dropoff_latitude",
    "dropoff_longitude", "fare", "pickup_census_tract", "pickup_community_area", "pickup_latitude",
    "pickup_longitude", "tips", "trip_miles", "trip_seconds", "trip_start_day", "trip_start_hour",
    "trip_start_month", "trip_start_timestamp",
}
HOURS = {f"trip_start_hour={h}" for h in range(24)}


# ---------------------------------------------------------------------------
# Reading the HTML back
# ---------------------------------------------------------------------------


class _Tables(HTMLParser):
    """Every <table>: its class, data-split and body rows (row attributes and
    the text of each cell; text inside SVG charts is left out)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[dict] = []
        self._stack: list[dict] = []
        self._cell: list[str] | None = None
        self._svg = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._stack.append({"class": a.get("class", ""), "split": a.get("data-split"), "rows": [],
                                "head": False})
        elif tag == "thead" and self._stack:
            self._stack[-1]["head"] = True
        elif tag == "tbody" and self._stack:
            self._stack[-1]["head"] = False
        elif tag == "tr" and self._stack and not self._stack[-1]["head"]:
            self._stack[-1]["rows"].append((a, []))
        elif tag in ("td", "th") and self._stack and not self._stack[-1]["head"]:
            self._cell = []
        elif tag == "svg":
            self._svg += 1

    def handle_endtag(self, tag):
        if tag == "table" and self._stack:
            self.tables.append(self._stack.pop())
        elif tag in ("td", "th") and self._cell is not None:
            self._stack[-1]["rows"][-1][1].append(" ".join(self._cell))
            self._cell = None
        elif tag == "svg":
            self._svg -= 1

    def handle_data(self, data):
        if self._cell is not None and not self._svg and data.strip():
            self._cell.append(data.strip())


def tables(html: str, cls: str) -> list[dict]:
    parser = _Tables()
    parser.feed(html)
    return [t for t in parser.tables if cls in t["class"].split()]


def rows_by(html: str, cls: str, attr: str) -> dict[str, list[str]]:
    """The rows of the one table of class `cls`, by a row attribute."""
    [table] = tables(html, cls)
    return {a[attr]: cells for a, cells in table["rows"]}


def tfx_artifact(uri_end: str) -> tuple[str, dict, dict]:
    """(type, properties, custom properties) of the TFX store's artifact whose
    URI ends so, read straight from its SQLite file."""
    db = sqlite3.connect(f"file:{os.path.join(TFX_STORE, 'metadata.sqlite')}?mode=ro", uri=True)
    try:
        [(aid, type_name)] = db.execute(
            "SELECT a.id, t.name FROM Artifact a JOIN Type t ON a.type_id = t.id WHERE a.uri LIKE ?",
            ("%/" + uri_end,)).fetchall()
        props: tuple[dict, dict] = ({}, {})
        for name, custom, i, d, s in db.execute(
                "SELECT name, is_custom_property, int_value, double_value, string_value FROM ArtifactProperty "
                "WHERE artifact_id = ?", (aid,)):
            props[custom][name] = i if i is not None else d if d is not None else s
    finally:
        db.close()
    return type_name, props[0], props[1]


def conveyor_artifact(type_name: str) -> tuple[str, dict, dict]:
    """(URI in the fixture, properties, custom properties) as the Conveyor run recorded them."""
    with open(os.path.join(CONVEYOR, "artifacts.json")) as f:
        [a] = [a for a in json.load(f) if a["type"] == type_name]
    return os.path.join(CONVEYOR, a["uri"]), a["properties"], a["custom_properties"]


def render_tfx(uri_end: str, link=None) -> str:
    type_name, props, custom = tfx_artifact(uri_end)
    return render.render_artifact(type_name, os.path.join(TFX, uri_end), props, custom, link)


def render_conveyor(type_name: str, link=None) -> str:
    uri, props, custom = conveyor_artifact(type_name)
    return render.render_artifact(type_name, uri, props, custom, link)


def stats_features(uri: str, split: str) -> set[str]:
    data = statistics_pb2.DatasetFeatureStatisticsList()
    with open(os.path.join(uri, f"Split-{split}", "FeatureStats.pb"), "rb") as f:
        data.ParseFromString(f.read())
    return {".".join(feature.path.step) for feature in data.datasets[0].features}


def write_stats(path: str, features: list[statistics_pb2.FeatureNameStatistics], num_examples: int) -> None:
    data = statistics_pb2.DatasetFeatureStatisticsList()
    data.datasets.add(num_examples=num_examples).features.extend(features)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.SerializeToString())


# ---------------------------------------------------------------------------
# ExampleStatistics
# ---------------------------------------------------------------------------


def _all_stats_rows(html: str) -> dict[str, list[str]]:
    return {**rows_by(html, "cv-stats-numeric", "data-feature"), **rows_by(html, "cv-stats-string", "data-feature")}


def test_tfx_statistics_every_feature_both_splits_side_by_side():
    html = render_tfx("StatisticsGen/statistics/3")
    uri = os.path.join(TFX, "StatisticsGen/statistics/3")
    assert stats_features(uri, "train") == stats_features(uri, "eval") == TAXI_FEATURES
    rows = _all_stats_rows(html)
    assert set(rows) == TAXI_FEATURES
    # train then eval (the split_names property's order), each with its number of examples.
    assert re.findall(r'class="cv-split-start">(\w+) <span class="cv-muted">\(([\d,]+) examples', html) == [
        ("train", "10,036"), ("eval", "4,966")] * 2
    # feature, type, then train's 9 columns and eval's: count, missing, mean, std, min, median, max, zeros, histogram.
    assert rows["fare"] == ["fare", "FLOAT", "10,036", "0%", "11.7", "12.26", "0", "7.85", "700.1", "0.199%", "",
                            "4,966", "0%", "11.9", "9.925", "0", "8.05", "87.65", "0.141%", ""]
    # TFX's CSV reader writes a missing value as an empty list: 7,197 of 10,036 have a value.
    assert rows["dropoff_census_tract"][2:4] == ["10,036", "0%, 28.3% empty"]
    # No value at all in train: no made-up zeros for mean, min, max.
    assert rows["pickup_census_tract"][2:11] == ["10,036", "0%, 100% empty"] + ["—"] * 7
    assert rows["company"] == [
        "company", "STRING", "10,036", "0%, 33.9% empty", "45",
        "Taxi Affiliation Services 3,483 Dispatch Taxi Affiliation 1,073 Blue Ribbon Taxi Association Inc. 726 "
        "Choice Taxi Association 591 Northwest Management LLC 382",
        "4,966", "0%, 34.9% empty", "37",
        "Taxi Affiliation Services 1,693 Dispatch Taxi Affiliation 563 Blue Ribbon Taxi Association Inc. 364 "
        "Choice Taxi Association 281 Northwest Management LLC 169",
    ]


def test_tfx_statistics_values_are_the_protos():
    data = statistics_pb2.DatasetFeatureStatisticsList()
    with open(os.path.join(TFX, "StatisticsGen/statistics/3/Split-train/FeatureStats.pb"), "rb") as f:
        data.ParseFromString(f.read())
    by_name = {".".join(x.path.step): x for x in data.datasets[0].features}
    fare = by_name["fare"].num_stats
    assert (fare.common_stats.num_non_missing, round(fare.mean, 2), round(fare.std_dev, 2)) == (10036, 11.7, 12.26)
    [standard] = [h for h in fare.histograms if h.type == h.STANDARD]
    html = render_tfx("StatisticsGen/statistics/3")
    [fare_row] = re.findall(r'<tr data-feature="fare">.*?</tr>', html)
    # One histogram per split, one bar per bucket of the standard histogram.
    hists = re.findall(r'<svg class="cv-chart cv-hist".*?</svg>', fare_row)
    assert len(hists) == 2 and hists[0].count("<rect") == len(standard.buckets) == 10
    first = standard.buckets[0]
    assert f"<title>{render._num(first.low_value)} to {render._num(first.high_value)}: " in hists[0]
    company = by_name["company"].string_stats
    assert (company.top_values[0].value, company.top_values[0].frequency, company.unique) == (
        "Taxi Affiliation Services", 3483, 45)


def test_conveyor_statistics():
    html = render_conveyor("ExampleStatistics")
    uri, _, _ = conveyor_artifact("ExampleStatistics")
    assert stats_features(uri, "train") == stats_features(uri, "eval") == TAXI_FEATURES
    rows = _all_stats_rows(html)
    assert set(rows) == TAXI_FEATURES
    assert re.findall(r'class="cv-split-start">(\w+) <span class="cv-muted">\(([\d,]+) examples', html) == [
        ("train", "9,936"), ("eval", "5,066")] * 2
    # mean 11.7034, std 12.1408, max 700.07, 19 zeros of 9,936 in the proto
    assert rows["fare"][:11] == ["fare", "FLOAT", "9,936", "0%", "11.7", "12.14", "0", "7.85", "700.1",
                                 "0.191%", ""]
    assert rows["fare"][11:14] == ["5,066", "0%", "11.9"]
    # Conveyor writes a missing value as missing (a null), not as an empty list.
    assert rows["pickup_census_tract"][2:4] == ["0", "100%"]
    assert rows["pickup_census_tract"][11:13] == ["1", ">99.9%"]
    assert rows["company"][2:6] == [
        "6,561", "34%", "51",
        "Taxi Affiliation Services 3,408 Dispatch Taxi Affiliation 1,095 Blue Ribbon Taxi Association Inc. 760 "
        "Choice Taxi Association 583 Northwest Management LLC 354"]
    assert html.count('<svg class="cv-chart cv-hist"') == 2 * 16 - 1  # 16 numeric features, one with no values
    assert render_conveyor("ExampleStatistics") == html  # deterministic


def test_statistics_escape_feature_names_and_values(tmp_path):
    name = "<script>alert('x')</script>"
    feature = statistics_pb2.FeatureNameStatistics(type=statistics_pb2.FeatureNameStatistics.STRING)
    feature.path.step.append(name)
    common = feature.string_stats.common_stats
    common.num_non_missing, common.num_missing, common.tot_num_values = 3, 1, 3
    common.min_num_values = common.max_num_values = common.avg_num_values = 1
    feature.string_stats.unique = 2
    feature.string_stats.top_values.add(value="<b>&bold</b>", frequency=2)
    feature.string_stats.top_values.add(value='say "hi"', frequency=1)
    write_stats(str(tmp_path / "Split-train" / "FeatureStats.pb"), [feature], 3)
    html = render.render_artifact("ExampleStatistics", str(tmp_path), {}, {})
    assert "<script>" not in html and "<b>" not in html and name not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "&lt;b&gt;&amp;bold&lt;/b&gt;" in html and "say &quot;hi&quot;" in html
    rows = rows_by(html, "cv-stats-string", "data-feature")
    assert rows == {name: [name, "STRING", "3", "25%", "2", '<b>&bold</b> 2 say "hi" 1']}


# ---------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["tfx", "conveyor"])
def test_schema_lists_every_feature(which):
    from google.protobuf import text_format

    if which == "tfx":
        uri = os.path.join(TFX, "SchemaGen/schema/4")
        html = render_tfx("SchemaGen/schema/4")
    else:
        uri, _, _ = conveyor_artifact("Schema")
        html = render_conveyor("Schema")
    with open(os.path.join(uri, "schema.pbtxt")) as f:
        schema = text_format.Parse(f.read(), schema_pb2.Schema())
    rows = rows_by(html, "cv-schema", "data-feature")
    assert set(rows) == {f.name for f in schema.feature} == TAXI_FEATURES
    # feature, type, presence, valency/shape, domain, drift/skew
    assert rows["fare"] == ["fare", "FLOAT", "≥ 100%, min count 1", "[1]", "", ""]
    # The domain's values as the schema lists them (TFDV appends values it meets later).
    assert rows["payment_type"][4] == "payment_type: " + (
        "Cash, Credit Card, Dispute, No Charge, Pcard, Unknown, Prcard" if which == "tfx"
        else "Cash, Credit Card, Dispute, No Charge, Pcard, Prcard, Unknown")
    company = rows["company"][4]
    [domain] = [d for d in schema.string_domain if d.name == "company"]
    assert company.startswith("company: " + ", ".join(domain.value[:8]))
    assert company.endswith(f"(+{len(domain.value) - 8} more)")
    if which == "conveyor":
        assert rows["pickup_community_area"][2:4] == ["min count 1", "1 values"]


def test_schema_comparators_ranges_and_environments(tmp_path):
    schema = schema_pb2.Schema(default_environment=["TRAINING", "SERVING"])
    f = schema.feature.add(name="hour", type=schema_pb2.INT)
    f.int_domain.min, f.int_domain.max = 0, 23
    f.drift_comparator.infinity_norm.threshold = 0.01
    f.skew_comparator.jensen_shannon_divergence.threshold = 0.3
    f.value_count.min, f.value_count.max = 1, 3
    g = schema.feature.add(name="label", type=schema_pb2.FLOAT, not_in_environment=["SERVING"])
    g.float_domain.min = 0.5
    g.presence.min_fraction = 0.5
    from google.protobuf import text_format

    (tmp_path / "schema.pbtxt").write_text(text_format.MessageToString(schema))
    rows = rows_by(render.render_artifact("Schema", str(tmp_path), {}, {}), "cv-schema", "data-feature")
    assert rows == {
        "hour": ["hour", "INT", "", "1..3 values", "0..23",
                 "drift infinity norm ≤ 0.01; skew jensen shannon divergence ≤ 0.3", ""],
        "label": ["label", "FLOAT", "≥ 50%", "", "0.5..", "", "not in SERVING"],
    }


# ---------------------------------------------------------------------------
# ExampleAnomalies
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["tfx", "conveyor"])
def test_no_anomalies_per_split(which):
    html = render_tfx("ExampleValidator/anomalies/5") if which == "tfx" else render_conveyor("ExampleAnomalies")
    assert re.findall(r'<h4>(\w+)</h4>\s*<p><span class="cv-verdict cv-ok">no anomalies</span>', html) == [
        "train", "eval"]
    assert not tables(html, "cv-anomalies")


def test_anomalies_table(tmp_path):
    anomalies = anomalies_pb2.Anomalies()
    info = anomalies.anomaly_info["payment_type"]
    info.severity = anomalies_pb2.AnomalyInfo.ERROR
    info.short_description = "Unexpected string values"
    info.description = "Examples contain values missing from the schema: <Bitcoin> (~1%)."
    anomalies.anomaly_info["fare"].severity = anomalies_pb2.AnomalyInfo.WARNING
    anomalies.anomaly_info["fare"].short_description = "Column dropped"
    anomalies.anomaly_info["fare"].description = "The feature was present in fewer examples than expected."
    drift = anomalies.drift_skew_info.add()
    drift.path.step.append("company")
    drift.drift_measurements.add(type=anomalies_pb2.DriftSkewInfo.Measurement.L_INFTY, value=0.25, threshold=0.01)
    for split, message in (("train", anomalies), ("eval", anomalies_pb2.Anomalies())):
        (tmp_path / f"Split-{split}").mkdir()
        (tmp_path / f"Split-{split}" / "SchemaDiff.pb").write_bytes(message.SerializeToString())
    html = render.render_artifact("ExampleAnomalies", str(tmp_path), {"split_names": '["train", "eval"]'}, {})
    [table] = tables(html, "cv-anomalies")
    assert table["split"] == "train"
    assert [cells for _, cells in table["rows"]] == [
        ["fare", "WARNING", "Column dropped", "The feature was present in fewer examples than expected."],
        ["payment_type", "ERROR", "Unexpected string values",
         "Examples contain values missing from the schema: <Bitcoin> (~1%)."],
    ]
    assert "&lt;Bitcoin&gt;" in html
    assert '<h4>train</h4>\n<p><span class="cv-verdict cv-bad">2 anomalies</span>' in html
    assert '<h4>eval</h4>\n<p><span class="cv-verdict cv-ok">no anomalies</span>' in html
    assert "<td><code>company</code></td><td>drift</td><td>L_INFTY</td><td class=\"cv-n\">0.25</td>" in html


# ---------------------------------------------------------------------------
# ModelEvaluation
# ---------------------------------------------------------------------------


def test_tfx_evaluation_against_a_baseline():
    html = render_tfx("Evaluator/evaluation/17")
    [table] = tables(html, "cv-metrics")
    assert [cells for _, cells in table["rows"]] == [["Overall", "0.794", "0.794", "0"]]
    assert re.findall(r"<th>([^<]*)</th>", html.split('class="cv-table cv-metrics"')[1].split("</thead>")[0]) == [
        "slice", "binary_accuracy", "binary_accuracy [baseline]", "binary_accuracy [diff]"]
    [models] = tables(html, "cv-models")
    assert [cells for _, cells in models["rows"]] == [
        ["baseline", "/pipelines/tfx_taxi/root/Trainer/model/7/Format-Serving"],
        ["candidate", "/pipelines/tfx_taxi/root/Trainer/model/7/Format-Serving"]]
    assert '<span class="cv-verdict cv-ok">validation OK</span>' in html
    # The first run had no baseline: one column.
    first = tables(render_tfx("Evaluator/evaluation/8"), "cv-metrics")[0]
    assert [cells for _, cells in first["rows"]] == [["Overall", "0.794"]]


def test_conveyor_evaluation_one_row_per_slice():
    html = render_conveyor("ModelEvaluation")
    rows = rows_by(html, "cv-metrics", "data-slice")
    assert set(rows) == {"Overall"} | HOURS
    # Overall first, then the hours in numeric order.
    assert list(rows)[:4] == ["Overall", "trip_start_hour=0", "trip_start_hour=1", "trip_start_hour=2"]
    # example_count, binary_accuracy (the model's own), binary_accuracy (TFMA's, unweighted), loss
    assert rows["Overall"] == ["Overall", "5,066", "0.8936", "0.8936", "0.2063"]
    assert rows["trip_start_hour=19"] == ["trip_start_hour=19", "344", "0.9041", "0.9041", "0.2085"]
    # The evaluation read the whole eval split, hour by hour.
    assert sum(int(rows[h][1].replace(",", "")) for h in HOURS) == 5066
    header = html.split('class="cv-table cv-metrics"')[1].split("</thead>")[0]
    assert re.findall(r"<th>([^<]*)</th>", header) == [
        "slice", "example_count", "binary_accuracy", "binary_accuracy (unweighted)", "loss"]
    # A bar per slice of the first metric that is not example_count.
    assert "<h4>binary_accuracy per slice</h4>" in html
    chart = html.split("<h4>binary_accuracy per slice</h4>")[1].split("</svg>")[0]
    assert chart.count("<rect") == 25 and "<title>Overall: 0.8936</title>" in chart
    assert '<span class="cv-verdict cv-ok">validation OK</span>' in html
    assert "No baseline model: change thresholds were not checked." in html


def test_conveyor_evaluation_matches_tfma_own_decoding():
    """The descriptors read out of TFMA's generated code decode as TFMA does."""
    from tensorflow_model_analysis.proto import metrics_for_slice_pb2

    from conveyor.components.examples_io import read_tfrecords

    uri, _, _ = conveyor_artifact("ModelEvaluation")
    with open(os.path.join(uri, "metrics-00000-of-00001.tfrecord"), "rb") as f:
        records = list(read_tfrecords(f))
    decoded = [metrics_for_slice_pb2.MetricsForSlice.FromString(r) for r in records]
    [overall] = [m for m in decoded if not m.slice_key.single_slice_keys]
    [count] = [kv.value.double_value.value for kv in overall.metric_keys_and_values if kv.key.name == "example_count"]
    assert count == 5066
    rows = rows_by(render_conveyor("ModelEvaluation"), "cv-metrics", "data-slice")
    assert rows["Overall"][1] == render._num(count) == "5,066"
    assert len(rows) == len(decoded) == 25
    private = render._tfma_classes_from_sources()[0]  # whether or not TFMA was imported already
    assert private is not metrics_for_slice_pb2.MetricsForSlice
    assert [private.FromString(r).SerializeToString(deterministic=True) for r in records] == [
        m.SerializeToString(deterministic=True) for m in decoded]


def test_evaluation_plots_and_failed_validation(tmp_path):
    from tensorflow_model_analysis.proto import metrics_for_slice_pb2 as mfs
    from tensorflow_model_analysis.proto import validation_result_pb2

    metrics = mfs.MetricsForSlice()
    kv = metrics.metric_keys_and_values.add()
    kv.key.name = "auc"
    kv.value.double_value.value = 0.5
    hour = mfs.MetricsForSlice()
    hour.slice_key.single_slice_keys.add(column="company", bytes_value=b"<Flash> Cab")
    kv = hour.metric_keys_and_values.add()
    kv.key.name = "auc"
    kv.value.double_value.value = 0.25
    plots = mfs.PlotsForSlice()
    plot = plots.plot_keys_and_values.add()
    for lo, n, label, prediction in ((0.0, 10, 1, 2), (0.5, 10, 6, 7), (0.9, 0, 0, 0)):
        b = plot.value.calibration_histogram_buckets.buckets.add(lower_threshold_inclusive=lo)
        b.num_weighted_examples.value, b.total_weighted_label.value = n, label
        b.total_weighted_refined_prediction.value = prediction
    for t, p, r in ((0.1, 0.5, 1.0), (0.9, 1.0, 0.2)):
        plot.value.confusion_matrix_at_thresholds.matrices.add(threshold=t, precision=p, recall=r)
    validation = validation_result_pb2.ValidationResult(validation_ok=False)
    failure = validation.metric_validations_per_slice.add().failures.add()
    failure.metric_key.name = "auc"
    failure.metric_value.double_value.value = 0.5
    failure.metric_threshold.value_threshold.lower_bound.value = 0.7
    failure.message = "auc below 0.7"
    validation.missing_slices.add().feature_keys.append("trip_start_day")
    (tmp_path / "metrics-00000-of-00001").write_bytes(frame_tfrecords([hour.SerializeToString(),
                                                                        metrics.SerializeToString()]))
    (tmp_path / "plots-00000-of-00001").write_bytes(frame_tfrecords([plots.SerializeToString()]))
    (tmp_path / "validations.tfrecord").write_bytes(frame_tfrecords([validation.SerializeToString()]))
    html = render.render_artifact("ModelEvaluation", str(tmp_path), {}, {})
    rows = rows_by(html, "cv-metrics", "data-slice")
    assert rows == {"Overall": ["Overall", "0.5"], "company=<Flash> Cab": ["company=<Flash> Cab", "0.25"]}
    assert "company=&lt;Flash&gt; Cab" in html and "<Flash>" not in html
    # Calibration: (mean prediction, mean label) of the two buckets with examples, by the y = x line.
    assert "<h4>Calibration</h4>" in html and "<h4>Precision-recall</h4>" in html
    calibration = html.split("<h4>Calibration</h4>")[1].split("</svg>")[0]
    assert re.search(r'class="cv-line" points="([\d.,]+) ([\d.,]+)"', calibration).groups() == (
        "70,170", "160,80")  # x = 34 + 180 * 0.2 (0.7), y = 8 + 180 - 180 * 0.1 (0.6)
    assert '<span class="cv-verdict cv-bad">validation failed</span>' in html
    [failures] = tables(html, "cv-failures")
    assert [cells for _, cells in failures["rows"]] == [
        ["Overall", "auc", "0.5", "value_threshold { lower_bound { value: 0.7 } }", "auc below 0.7"],
        ['feature_keys: "trip_start_day"', "", "", "", "slice missing from the evaluation data"],
    ]


def test_evaluation_without_tensorflow():
    """Rendering an evaluation imports neither TFMA nor TensorFlow."""
    uri, _, _ = conveyor_artifact("ModelEvaluation")
    code = (
        "import sys; from conveyor.ui import render; "
        f"html = render.render_artifact('ModelEvaluation', {uri!r}, {{}}, {{}}); "
        "assert 'trip_start_hour=23' in html; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_model_analysis')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------
# ModelBlessing, PushedModel, files
# ---------------------------------------------------------------------------


def test_tfx_blessing_links_candidate_and_baseline():
    html = render_tfx("Evaluator/blessing/17", link=lambda i: f"/artifact/{i}")
    assert '<span class="cv-verdict cv-ok">BLESSED</span>' in html
    rows = {cells[0]: cells[1] for _, cells in tables(html, "cv-blessing")[0]["rows"]}
    assert rows == {"current model": "model 13 /pipelines/tfx_taxi/root/Trainer/model/7",
                    "baseline model": "model 13 /pipelines/tfx_taxi/root/Trainer/model/7"}
    assert html.count('<a href="/artifact/13">model 13</a>') == 2
    first = render_tfx("Evaluator/blessing/8")
    assert "none: no blessed model to compare with" in first


def test_blessing_from_its_file_and_not_blessed(tmp_path):
    uri, _, _ = conveyor_artifact("ModelBlessing")
    # Without metadata, the marker file tells.
    assert '<span class="cv-verdict cv-ok">BLESSED</span>' in render.render_artifact("ModelBlessing", uri, {}, {})
    html = render_conveyor("ModelBlessing", link=lambda i: f"#a{i}")
    assert '<span class="cv-verdict cv-ok">BLESSED</span>' in html and '<a href="#a8">model 8</a>' in html
    (tmp_path / "NOT_BLESSED").write_bytes(b"")
    html = render.render_artifact("ModelBlessing", str(tmp_path), {}, {})
    assert '<span class="cv-verdict cv-bad">NOT_BLESSED</span>' in html


def test_pushed_model_whose_files_are_gone():
    uri = os.path.join(TFX, "Pusher/pushed_model/9")
    html = render_tfx("Pusher/pushed_model/9")
    assert f"The files of this artifact are gone (URI <code>{uri}</code>)" in html
    assert '<span class="cv-verdict cv-ok">pushed</span>' in html
    rows = {cells[0]: cells[1] for _, cells in tables(html, "cv-push")[0]["rows"]}
    assert rows == {"destination": "/pipelines/tfx_taxi/serving/1795341485", "version": "1795341485"}


@pytest.mark.parametrize("uri_end", ["Trainer/model/7", "Transform/transform_graph/6", "StatisticsGen/statistics/99"])
def test_files_gone(uri_end):
    uri = os.path.join(TFX, uri_end)
    html = render.render_artifact("Model", uri, {}, {})
    assert f"The files of this artifact are gone (URI <code>{uri}</code>): only its metadata is shown." in html
    if uri_end.startswith("Statistics"):
        html = render.render_artifact("ExampleStatistics", uri, {}, {})
        assert "The files of this artifact are gone" in html and "cv-stats" not in html


def test_unknown_type_lists_its_files():
    html = render_tfx("CsvExampleGen/examples/1")
    [table] = tables(html, "cv-table")
    sizes = {n: os.path.getsize(os.path.join(TFX, "CsvExampleGen/examples/1", n)) for n in (
        "Split-eval/data_tfrecord-00000-of-00002.gz", "Split-eval/data_tfrecord-00001-of-00002.gz",
        "Split-train/data_tfrecord-00000-of-00002.gz", "Split-train/data_tfrecord-00001-of-00002.gz")}
    assert [cells for _, cells in table["rows"]] == [[n, f"{s / 1024:.1f} KiB"] for n, s in sizes.items()]
    assert "4 files" in html


def test_file_listing_is_capped(tmp_path):
    for i in range(render.MAX_FILES + 5):
        (tmp_path / f"part-{i:05d}").write_bytes(b"x" * i)
    html = render.render_artifact("TransformGraph", str(tmp_path), {}, {})
    [table] = tables(html, "cv-table")
    assert len(table["rows"]) == render.MAX_FILES
    assert table["rows"][-1][1] == ["part-00199", "199 B"]
    assert f"{render.MAX_FILES + 5} files (the first {render.MAX_FILES} of {render.MAX_FILES + 5} shown)" in html


def test_unreadable_file_says_so(tmp_path):
    (tmp_path / "Split-train").mkdir()
    (tmp_path / "Split-train" / "FeatureStats.pb").write_bytes(b"\xff\xff not a proto")
    html = render.render_artifact("ExampleStatistics", str(tmp_path), {}, {})
    assert '<p class="cv-error">Could not read the files of this artifact: DecodeError' in html
    assert "<code>Split-train/FeatureStats.pb</code>" in html


def test_css_is_one_stylesheet():
    css = render.render_css()
    assert ".cv-table" in css and ".cv-chart" in css and "<" not in css and "url(" not in css


# ---------------------------------------------------------------------------
# Object stores
# ---------------------------------------------------------------------------


def test_same_pages_from_s3(s3_env):
    bucket = s3_env.bucket("ui-render")
    s3_env.upload_dir(CONVEYOR, f"{bucket}/root")
    for type_name in ("ExampleStatistics", "Schema", "ExampleAnomalies", "ModelEvaluation", "ModelBlessing"):
        uri, props, custom = conveyor_artifact(type_name)
        remote = f"{bucket}/root/" + os.path.relpath(uri, CONVEYOR)
        assert render.render_artifact(type_name, remote, props, custom) == render.render_artifact(
            type_name, uri, props, custom), type_name
    gone = f"{bucket}/root/trainer/model/7"
    assert f"The files of this artifact are gone (URI <code>{gone}</code>)" in render.render_artifact(
        "Model", gone, {}, {})
