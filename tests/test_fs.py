"""conveyor.fs, the one filesystem layer for artifact paths, on a local
directory and on a real S3 server (moto on loopback)."""

from __future__ import annotations

import itertools
import os

import pytest

from conveyor import Pipeline, PipelineDefinitionError, fs
from conveyor.pipeline.dsl import default_metadata_path

_buckets = itertools.count()


@pytest.fixture(params=["local", "s3"])
def base(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "base")
    server = request.getfixturevalue("s3_env")
    return f"{server.bucket(f'fs-test-{next(_buckets)}')}/base"


def test_write_read_and_queries(base):
    fs.write_text(fs.join(base, "a", "b.txt"), "hello")
    fs.write_bytes(fs.join(base, "a", "c", "d.bin"), b"\x00\x01")
    assert fs.read_text(fs.join(base, "a", "b.txt")) == "hello"
    assert fs.read_bytes(fs.join(base, "a", "c", "d.bin")) == b"\x00\x01"
    assert fs.exists(base) and fs.isdir(fs.join(base, "a")) and not fs.isfile(fs.join(base, "a"))
    assert fs.isfile(fs.join(base, "a", "b.txt")) and not fs.isdir(fs.join(base, "a", "b.txt"))
    assert not fs.exists(fs.join(base, "nope"))
    assert fs.listdir(fs.join(base, "a")) == ["b.txt", "c"]
    assert fs.walk_files(base) == ["a/b.txt", "a/c/d.bin"]
    assert fs.glob(fs.join(base, "a", "*.txt")) == [fs.join(base, "a", "b.txt")]
    assert fs.glob(fs.join(base, "*", "c", "*")) == [fs.join(base, "a", "c", "d.bin")]
    # A shell glob's '*' does not cross '/'.
    assert fs.glob(fs.join(base, "*.txt")) == []
    with fs.open(fs.join(base, "a", "b.txt")) as f:
        assert f.read() == "hello"


def test_stat_reports_size_time_and_object_checksum(base):
    fs.write_text(fs.join(base, "x.txt"), "12345")
    fs.write_text(fs.join(base, "y.txt"), "1")
    x, y = fs.stat_many([fs.join(base, "x.txt"), fs.join(base, "y.txt")])
    assert (x.size, y.size) == (5, 1)
    assert x.mtime_ns > 0
    if fs.is_remote(base):
        assert x.checksum and x.checksum != y.checksum  # S3's ETag
    else:
        assert x.checksum == ""
    fs.write_text(fs.join(base, "x.txt"), "54321")
    if fs.is_remote(base):
        # Same size, rewritten within the same second: the ETag still tells.
        assert fs.stat(fs.join(base, "x.txt")).checksum != x.checksum


def test_copytree_rename_rmtree(base):
    src = fs.join(base, "src")
    for rel in ("saved_model.pb", "variables/variables.index", "variables/variables.data-00000-of-00001"):
        fs.write_text(fs.join(src, rel), rel)
    fs.copytree(src, fs.join(base, "copy"), last=["saved_model.pb"])
    assert fs.walk_files(fs.join(base, "copy")) == fs.walk_files(src)
    assert fs.read_text(fs.join(base, "copy", "variables", "variables.index")) == "variables/variables.index"
    fs.rename(fs.join(base, "copy"), fs.join(base, "moved"))
    assert not fs.exists(fs.join(base, "copy"))
    assert fs.walk_files(fs.join(base, "moved")) == fs.walk_files(src)
    fs.rmtree(fs.join(base, "moved"))
    assert not fs.exists(fs.join(base, "moved"))
    fs.rmtree(fs.join(base, "never-existed"))  # no error


def test_complete_marker(base):
    uri = fs.join(base, "artifact")
    fs.write_text(fs.join(uri, "data.txt"), "x")
    assert not fs.is_complete(uri)
    fs.mark_complete(uri)
    assert fs.is_complete(uri)


def test_arrow_filesystem_reads_and_writes_parquet(base):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = fs.join(base, "t", "data.parquet")
    fs.makedirs(fs.dirname(path))
    filesystem, inner = fs.arrow_filesystem(path)
    pq.write_table(pa.table({"a": [1, 2, 3]}), inner, filesystem=filesystem)
    with fs.open(path, "rb") as f:
        assert pq.read_table(f).column("a").to_pylist() == [1, 2, 3]


def test_paths():
    assert fs.scheme("s3://b/k") == "s3" and fs.scheme("/tmp/x") == "" and fs.scheme("file:///tmp") == ""
    assert fs.abspath("s3://bucket/a/../b/") == "s3://bucket/b"
    assert fs.join("s3://bucket/a", "b", "c") == "s3://bucket/a/b/c"
    assert fs.abspath("rel") == os.path.abspath("rel")
    with pytest.raises(ValueError, match="hdfs:// is not supported"):
        fs.abspath("hdfs://nn/x")


def test_beam_args_name_the_endpoint_never_the_secrets(s3_env):
    args = fs.beam_args(["s3://bucket/root"])
    assert args == ["--beam_plugins=conveyor.beam_worker", f"--s3_endpoint_url={s3_env.endpoint}",
                    "--s3_region_name=us-east-1"]
    assert not any(s3_env.env["AWS_SECRET_ACCESS_KEY"] in a for a in args)
    assert fs.beam_args(["/local/root"]) == []


def test_remote_root_keeps_metadata_in_the_state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    p = Pipeline("remote", "s3://bucket/pipelines/remote", [])
    assert p.root == "s3://bucket/pipelines/remote"
    assert p.metadata == str(tmp_path / "state" / "conveyor" / "remote" / "metadata.sqlite")
    assert default_metadata_path("remote") == p.metadata
    assert Pipeline("remote", "s3://bucket/x", [], metadata=str(tmp_path / "m.sqlite")).metadata == str(
        tmp_path / "m.sqlite"
    )
    local = Pipeline("local", str(tmp_path / "root"), [])
    assert local.metadata == str(tmp_path / "root" / "metadata.sqlite")
    with pytest.raises(PipelineDefinitionError, match="s3:// scheme is not supported"):
        Pipeline("remote", "s3://bucket/x", [], metadata="s3://bucket/m.sqlite")
    with pytest.raises(PipelineDefinitionError, match="not supported"):
        Pipeline("remote", "hdfs://nn/x", [])


def test_beam_s3_filesystem_shares_one_client_per_configuration():
    # Beam makes a client wrapper per S3 operation; each must get the same
    # boto3 client for the same configuration, another for another.
    from apache_beam.io.aws.clients.s3 import boto3_client

    fs.share_beam_s3_clients()
    fs.share_beam_s3_clients()  # installs once
    one = {"s3_endpoint_url": "http://127.0.0.1:1", "s3_region_name": "us-east-1",
           "s3_access_key_id": "a", "s3_secret_access_key": "b"}
    other = dict(one, s3_endpoint_url="http://127.0.0.1:2")
    first, second = boto3_client.Client(options=one), boto3_client.Client(options=one)
    assert first is not second and first.client is second.client
    third = boto3_client.Client(options=other)
    assert third.client is not first.client
    assert third.client.meta.endpoint_url == "http://127.0.0.1:2"
