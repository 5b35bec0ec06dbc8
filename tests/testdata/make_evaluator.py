"""Regenerate the Evaluator test data by running the real Evaluator executor on
the Trainer test model and the ExampleGen eval split:

    .venv/bin/python tests/testdata/make_evaluator.py

Writes

    taxi/evaluator/evaluation/       (TFMA output: tfma.load_eval_result(uri))
    taxi/evaluator/evaluation.json   (the artifact's properties)
    taxi/evaluator/blessing/BLESSED  (or NOT_BLESSED)
    taxi/evaluator/blessing.json     (properties; model uris relative to taxi/)

The model is evaluated as the first model of a pipeline (no baseline) with
TFX's taxi config: BinaryAccuracy >= 0.6 on the overall slice, sliced by
trip_start_hour too. Artifact ids are fixed: examples 1, model 2, schema 3.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TAXI = os.path.join(HERE, "taxi")


def main() -> None:
    sys.path.insert(0, os.path.dirname(HERE))  # The repo root, for tests.test_evaluator.
    from conveyor.artifacts import ModelBlessing, ModelEvaluation
    from tests.test_evaluator import MODEL_URI, run_evaluator, taxi_config

    out_dir = os.path.join(TAXI, "evaluator")
    work = tempfile.mkdtemp(prefix="conveyor_testdata_")
    try:
        from pathlib import Path

        config = taxi_config(lower_bound=0.6, change_absolute=None)
        evaluation, blessing, verdict = run_evaluator(Path(work), config)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.makedirs(out_dir)
        for artifact, name in ((evaluation, "evaluation"), (blessing, "blessing")):
            shutil.copytree(artifact.uri, os.path.join(out_dir, name))
            custom = dict(artifact.custom_properties)
            if custom.get("current_model") == MODEL_URI:
                custom["current_model"] = os.path.relpath(MODEL_URI, TAXI)
            with open(os.path.join(out_dir, f"{name}.json"), "w", encoding="utf-8") as f:
                json.dump({"properties": artifact.properties, "custom_properties": custom}, f,
                          indent=2, sort_keys=True)
                f.write("\n")
        assert isinstance(evaluation, ModelEvaluation) and isinstance(blessing, ModelBlessing)
        print(f"wrote {out_dir}: {verdict}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
