#!/usr/bin/env bash
# Build the peer venv: TFX 1.16.0 on the same TFDV/TFT/TFMA/tfx-bsl/MLMD/Beam
# stack as Conveyor (the versions pinned in constraints.txt), so the benchmarks
# can run TFX's pipelines beside Conveyor's on the same data in the same run.
#
#   bash bench/peers/setup_tfx.sh            # -> ${CONVEYOR_BENCH_DIR:-/tmp/conveyor-bench}/tfx-venv
#   CONVEYOR_TFX_VENV=/some/where bash bench/peers/setup_tfx.sh
#
# Idempotent: a venv with a matching marker file is left as it is (FORCE=1 rebuilds).
# Needs only PyPI. TFX 1.16 declares python<3.11 but runs on 3.11, hence
# --ignore-requires-python; its own dependencies are installed here explicitly
# (pip --no-deps for the TFX packages) so pip never backtracks through the stack.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BENCH_DIR="${CONVEYOR_BENCH_DIR:-/tmp/conveyor-bench}"
VENV="${CONVEYOR_TFX_VENV:-$BENCH_DIR/tfx-venv}"
PYTHON="${PYTHON:-python3}"
MARKER="$VENV/.conveyor-peer-tfx"

# The stack Conveyor runs on: setup.py's install_requires, pinned by constraints.txt.
mapfile -t STACK < <("$PYTHON" - "$REPO/setup.py" <<'PY'
import ast
import sys

for node in ast.walk(ast.parse(open(sys.argv[1]).read())):
    if isinstance(node, ast.keyword) and node.arg == "install_requires":
        for element in node.value.elts:
            print(ast.literal_eval(element))
PY
)
if [[ ${#STACK[@]} -eq 0 ]]; then
    echo "could not read install_requires from $REPO/setup.py" >&2
    exit 1
fi
# The venv is rebuilt when the recipe (bump the number), the stack or the pins change.
RECIPE="tfx-1.16.0 recipe 2 $(cat "$REPO/constraints.txt" <(printf '%s\n' "${STACK[@]}") | sha256sum | cut -c1-16)"

if [[ "${FORCE:-0}" != 1 && -f "$MARKER" && "$(cat "$MARKER")" == "$RECIPE" ]]; then
    echo "TFX peer venv ready: $VENV"
    exit 0
fi

rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/pip" install --disable-pip-version-check -q)

# Conveyor's stack, plus what TFX imports on top of it for the LocalDagRunner pipelines.
"${PIP[@]}" -c "$REPO/constraints.txt" "${STACK[@]}" 'kubernetes<27' portpicker docker
# TFX itself, without letting pip re-resolve the stack.
"${PIP[@]}" --no-deps --ignore-requires-python \
    tfx==1.16.0 ml-pipelines-sdk==1.16.0 keras-tuner==1.4.7 kt-legacy tensorflow-hub==0.15.0

# Fail here, not in the middle of a benchmark, if anything TFX imports is missing.
"$VENV/bin/python" - <<'PY'
import tfx
from tfx import v1 as tfx_v1  # noqa: F401
from tfx.orchestration.local.local_dag_runner import LocalDagRunner  # noqa: F401
from tfx.components import CsvExampleGen, Evaluator, Pusher, SchemaGen, StatisticsGen, Trainer, Transform  # noqa: F401
print("tfx", tfx.__version__)
PY
echo "$RECIPE" > "$MARKER"
echo "TFX peer venv ready: $VENV"
