"""CsvExampleGen against pyarrow's CSV parse of the same file.

    .venv/bin/python bench/example_gen.py                 # 1,500,000 rows, best of 3
    .venv/bin/python bench/example_gen.py --rows 200000 --repeat 5

In one process, after importing pyarrow and Beam (a node's process has them
imported before it starts): `pyarrow.csv.read_csv` of the generated taxi CSV
(`_common.taxi_csv`), then CsvExampleGen's executor on the same file (a Beam
pipeline on the in-memory DirectRunner: Beam's start-up, reading in byte
ranges, type checks, hash splitting, Parquet writing), each `--repeat` times,
in turn. Prints every time, each one's best, and the ratio of the bests.
Target: ExampleGen <= 5x pyarrow's parse. What the executor's node adds in a
pipeline run (process start, cache key, MLMD) is in `scale.py`'s per-node
figures, not here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import BENCH_DIR, load_average, taxi_csv  # noqa: E402

TARGET = 5.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_500_000, help="rows of the CSV (default 1,500,000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (default 3); the best counts")
    parser.add_argument("--data-dir", default=BENCH_DIR, help=f"where the CSV is cached (default {BENCH_DIR})")
    args = parser.parse_args()

    csv_path = taxi_csv(args.rows, args.data_dir)
    import apache_beam  # noqa: F401 - imported before timing, as in a node's process
    import pyarrow.csv as pcsv

    from conveyor import fs
    from conveyor.artifacts import Examples
    from conveyor.components.base import ExecutionContext
    from conveyor.components.example_gen import CsvExampleGen, run_csv

    component = CsvExampleGen(input_base=os.path.dirname(csv_path))
    print(f"CsvExampleGen against pyarrow.csv.read_csv: {args.rows:,} rows, "
          f"{os.path.getsize(csv_path) / 1e6:,.0f} MB ({csv_path}); load average {load_average()}")
    parse: list[float] = []
    example_gen: list[float] = []
    work = tempfile.mkdtemp(prefix="example-gen-", dir=args.data_dir)
    try:
        for i in range(args.repeat):
            t0 = time.monotonic()
            table = pcsv.read_csv(csv_path)
            parse.append(time.monotonic() - t0)
            rows = table.num_rows
            del table
            out = os.path.join(work, str(i))
            fs.makedirs(out)
            examples = Examples(out)
            t0 = time.monotonic()
            run_csv({}, {"examples": [examples]}, component.params, ExecutionContext(component_id=component.id))
            example_gen.append(time.monotonic() - t0)
            written = sum(int(n) for n in json.loads(examples.get("row_counts")).values())
            if written != rows:
                print(f"ExampleGen wrote {written:,} rows, pyarrow read {rows:,}", file=sys.stderr)
                return 1
            shutil.rmtree(out)
            print(f"  run {i + 1}: pyarrow {parse[-1]:.2f} s, ExampleGen {example_gen[-1]:.2f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = min(example_gen) / min(parse)
    verdict = "MET" if ratio <= TARGET else "MISSED"
    print(f"best: pyarrow {min(parse):.2f} s, ExampleGen {min(example_gen):.2f} s "
          f"= {ratio:.1f}x pyarrow (target <= {TARGET:.0f}x): {verdict}")
    print(f"load average at the end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
