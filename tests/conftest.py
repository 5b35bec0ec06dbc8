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


@pytest.fixture(scope="session")
def taxi_runs(tmp_path_factory):
    """Two short runs of the taxi example on one root and store, the second
    with more training steps (so the Trainer and what follows re-run): what
    the lineage, UI and report tests read. {"store", "root", "r1", "r2"}."""
    import shutil

    from conveyor import LocalRunner
    from tests.examples import example_dir, load_example

    base = tmp_path_factory.mktemp("taxi_runs")
    code = base / "code"
    code.mkdir()
    shutil.copy(os.path.join(example_dir("taxi"), "taxi_utils.py"), code / "taxi_utils.py")
    root = str(base / "root")

    def pipeline(train_steps: int):
        return load_example("taxi").create_pipeline(
            root, module_file=str(code / "taxi_utils.py"), serving_dir=os.path.join(root, "serving"),
            train_steps=train_steps, eval_steps=5,
        )

    first = LocalRunner(echo=print).run(pipeline(20), run_id="r1")
    second = LocalRunner(echo=print).run(pipeline(30), run_id="r2")
    return {"store": first.metadata_path, "r1": first, "r2": second, "root": root}
