"""conveyor.schema: load/save, curation, diff, show and the CLI entry points."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from tensorflow_metadata.proto.v0 import schema_pb2

from conveyor import schema as schema_lib
from conveyor.schema import cli

TAXI = os.path.join(os.path.dirname(__file__), "testdata", "taxi")
SCHEMA_DIR = os.path.join(TAXI, "schema_gen", "schema")


def taxi() -> schema_pb2.Schema:
    return schema_lib.load(SCHEMA_DIR)


def test_importing_the_module_imports_no_tensorflow():
    code = (
        "import sys, conveyor.schema, conveyor.schema.cli; "
        "import conveyor.components.statistics_gen, conveyor.components.schema_gen, "
        "conveyor.components.example_validator; "
        "heavy = [m for m in ('tensorflow', 'tensorflow_data_validation', 'apache_beam', "
        "'tensorflow_metadata') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_load_save_roundtrip(tmp_path):
    schema = taxi()
    assert len(schema.feature) == 18
    # A directory stands for the schema.pbtxt in it; save makes parent directories.
    written = schema_lib.save(schema, str(tmp_path / "a" / "b" / "schema.pbtxt"))
    assert written == str(tmp_path / "a" / "b" / "schema.pbtxt")
    assert schema_lib.load(written) == schema
    assert schema_lib.load(str(tmp_path / "a" / "b")) == schema
    assert os.listdir(tmp_path / "a" / "b") == ["schema.pbtxt"]
    # A path not ending in .pbtxt is a directory (an artifact's) to hold schema.pbtxt.
    assert schema_lib.save(schema, str(tmp_path / "artifact")) == str(tmp_path / "artifact" / "schema.pbtxt")


def test_load_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "schema.pbtxt"
    bad.write_text('feature {\n  name: "fare"\n  type: FLOT\n}\n')
    with pytest.raises(schema_lib.SchemaError) as e:
        schema_lib.load(str(bad))
    assert f"{bad}, line 3" in str(e.value) and "Did you mean 'FLOAT'" in str(e.value)
    bad.write_text('feature {\n  name: "fare"\n')
    with pytest.raises(schema_lib.SchemaError, match=r"line 2.*Expected \"}\""):
        schema_lib.load(str(bad))
    with pytest.raises(schema_lib.SchemaError, match="no such file"):
        schema_lib.load(str(tmp_path / "missing.pbtxt"))
    (tmp_path / "artifact").mkdir()
    with pytest.raises(schema_lib.SchemaError, match="has no schema.pbtxt"):
        schema_lib.load(str(tmp_path / "artifact"))


def test_set_environments_keeps_the_label_out_of_serving():
    schema = taxi()
    returned = schema_lib.set_environments(schema, ["TRAINING", "SERVING"], not_in={"SERVING": ["tips"]})
    assert returned is schema
    assert list(schema.default_environment) == ["TRAINING", "SERVING"]
    assert list(schema_lib.feature(schema, "tips").not_in_environment) == ["SERVING"]
    assert not any(f.not_in_environment for f in schema.feature if f.name != "tips")
    with pytest.raises(schema_lib.SchemaError, match="no feature 'tip'.*Did you mean 'tips'"):
        schema_lib.set_environments(schema, ["TRAINING", "SERVING"], not_in={"SERVING": ["tip"]})
    with pytest.raises(schema_lib.SchemaError, match="'SERVNG', which is not one of the environments"):
        schema_lib.set_environments(schema, ["TRAINING", "SERVING"], not_in={"SERVNG": ["tips"]})


def test_set_domain():
    schema = taxi()
    schema_lib.set_domain(schema, "payment_type", values=["Cash", "Credit Card"])
    payment = schema_lib.feature(schema, "payment_type")
    assert list(payment.string_domain.value) == ["Cash", "Credit Card"]
    # The named domain it used is gone with its last user.
    assert "payment_type" not in [d.name for d in schema.string_domain]
    schema_lib.set_domain(schema, "trip_start_hour", min=0, max=23)
    hour = schema_lib.feature(schema, "trip_start_hour").int_domain
    assert (hour.min, hour.max) == (0, 23)
    schema_lib.set_domain(schema, "fare", min=0.0)
    fare = schema_lib.feature(schema, "fare").float_domain
    assert fare.min == 0.0 and not fare.HasField("max")
    with pytest.raises(schema_lib.SchemaError, match="'fare' is FLOAT"):
        schema_lib.set_domain(schema, "fare", values=["1"])
    with pytest.raises(schema_lib.SchemaError, match="use values="):
        schema_lib.set_domain(schema, "company", min=1)
    with pytest.raises(schema_lib.SchemaError, match="min 5 is greater than max 1"):
        schema_lib.set_domain(schema, "trip_start_hour", min=5, max=1)


def test_set_required():
    schema = taxi()
    schema_lib.set_required(schema, "fare", False)
    fare = schema_lib.feature(schema, "fare")
    # An optional feature cannot keep a dense shape: it gets the same value count.
    assert not fare.HasField("shape") and (fare.value_count.min, fare.value_count.max) == (1, 1)
    assert fare.presence.min_fraction == 0
    schema_lib.set_required(schema, "company")
    company = schema_lib.feature(schema, "company")
    assert company.presence.min_fraction == 1.0 and company.presence.min_count == 1


def test_diff_reports_each_change():
    a, b = taxi(), taxi()
    assert schema_lib.diff(a, b) == []
    schema_lib.set_environments(b, ["TRAINING", "SERVING"], not_in={"SERVING": ["tips"]})
    schema_lib.set_domain(b, "trip_start_hour", min=0, max=23)
    schema_lib.set_required(b, "fare", False)
    schema_lib.feature(b, "trip_miles").type = schema_pb2.INT
    b.feature.remove(schema_lib.feature(b, "dropoff_census_tract"))
    b.feature.add(name="weekday", type=schema_pb2.BYTES)
    payment_domain = next(d for d in b.string_domain if d.name == "payment_type")
    payment_domain.value.remove("Dispute")
    payment_domain.value.append("Crypto")
    changes = schema_lib.diff(a, b)
    assert changes == [
        "dropoff_census_tract: removed (INT)",
        "weekday: added (BYTES, -, any)",
        "fare: presence required -> optional min_count=1",
        "fare: values shape [1] -> single",
        "trip_start_hour: domain - -> [0, 23]",
        "trip_miles: type FLOAT -> INT",
        "payment_type: string domain gained 1 value(s) ['Crypto'] and lost 1 value(s) ['Dispute']",
        "tips: environments - -> not in SERVING",
        "environments: none -> ['TRAINING', 'SERVING']",
    ]
    d = taxi()
    schema_lib.feature(d, "fare").presence.min_count = 100
    assert schema_lib.diff(a, d) == [
        "fare: presence min_fraction=1 min_count=1 -> min_fraction=1 min_count=100"
    ]
    # A change the summary does not spell out is still reported.
    c = taxi()
    schema_lib.feature(c, "fare").annotation.tag.append("money")
    assert schema_lib.diff(a, c) == ["fare: changed annotation"]


def test_show_lists_every_feature():
    schema = taxi()
    schema_lib.set_environments(schema, ["TRAINING", "SERVING"], not_in={"SERVING": ["tips"]})
    text = schema_lib.show(schema)
    lines = text.splitlines()
    assert lines[0].split() == ["feature", "type", "presence", "values", "domain", "environments"]
    rows = {line.split()[0]: line for line in lines[2:2 + 18]}
    assert len(rows) == 18
    assert rows["fare"].split()[1:4] == ["FLOAT", "required", "shape"]
    assert "payment_type: 7 values ('Cash', 'Credit Card'" in rows["payment_type"]
    assert rows["tips"].endswith("not in SERVING")
    assert "optional" in rows["pickup_community_area"] and "single" in rows["pickup_community_area"]
    assert lines[-1] == "18 features; environments: TRAINING, SERVING"


def test_cli(tmp_path, capsys):
    assert cli.show_main(SCHEMA_DIR) == 0
    assert "trip_start_hour" in capsys.readouterr().out
    same = schema_lib.save(taxi(), str(tmp_path / "same.pbtxt"))
    assert cli.diff_main(SCHEMA_DIR, same) == 0
    assert "No differences" in capsys.readouterr().out
    changed = taxi()
    schema_lib.set_required(changed, "tips", False)
    other = schema_lib.save(changed, str(tmp_path / "other.pbtxt"))
    assert cli.diff_main(SCHEMA_DIR, other) == 1
    out = capsys.readouterr().out
    assert "2 change(s)" in out and "tips: presence required -> optional" in out
    assert cli.show_main(str(tmp_path / "nope.pbtxt")) == 2
    assert "nope.pbtxt" in capsys.readouterr().err
