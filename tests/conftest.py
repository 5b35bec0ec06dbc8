"""Fixtures shared by the test modules."""

from __future__ import annotations

import os

import pytest

# Executors set this before TensorFlow's first use of tf.keras (see
# conveyor.components.base.use_keras_2); tests also import TensorFlow
# themselves, before any executor, so the test process sets it first.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from tests.s3 import S3Server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A moto S3 server on loopback for the whole session (see tests/s3.py)."""
    with S3Server(str(tmp_path_factory.mktemp("s3_server"))) as server:
        yield server


@pytest.fixture()
def s3_env(s3_server, monkeypatch):
    """The standard AWS environment pointing at the test server."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server
