"""ExampleGen: the components that bring data into a pipeline.

`CsvExampleGen` reads CSV files, `ImportExampleGen` reads TFRecord files of
tf.Example (gzipped or not) or Parquet files. Both write one `Examples`
artifact in Conveyor's layout (see `conveyor.components.examples_io`):
`Split-<name>/data-NNNNN-of-NNNNN.parquet` (or `.gz`, gzipped tf.Example,
with `output_file_format="tfrecords_gzip"`), one flat column per feature
(int64, double or string; a missing value is a null).

Which files, and how they become splits, is configured as in TFX, with plain
dataclasses instead of the example_gen protos:

    CsvExampleGen(
        input_base="data/",
        input_config=Input(splits=[InputSplit(name="single_split", pattern="span-{SPAN}/*.csv")]),
        output_config=Output(split_config=SplitConfig(splits=[
            SplitBucket(name="train", hash_buckets=2), SplitBucket(name="eval", hash_buckets=1)])),
    )

Split patterns are globs relative to `input_base`. `{SPAN}` and `{VERSION}`
(optionally with a digit count, `{SPAN:2}`) match digits; the latest span,
and the latest version within it, is read and recorded on the output. Several
input splits pass through as they are; one input split is divided by the
output hash buckets, by a hash of each whole row (or of one feature,
`SplitConfig.partition_feature_name`), so the same row always lands in the
same split, whatever the runner. The default is train:eval = 2:1.

Both run as Beam pipelines on the user's runner (`beam_pipeline_args`): the
input is cut into work items (CSV files into line-aligned byte ranges,
Parquet files into row groups, TFRecord files whole), read on the workers
into Arrow record batches, split and written through Beam's file sinks; only
the items and batches of rows move through Beam, so memory does not grow
with the data. Every path (input_base, the input files, the output) goes
through `conveyor.fs` on the driver and Beam's FileSystems on the workers, so
input and output may be local, `s3://` or `gs://`.

Caching: the input fingerprint that decides whether ExampleGen re-runs is
built from what the filesystem reports about each input file, without
reading it: its path relative to input_base, size, modification time (ns)
and, on S3 and GCS, the object's checksum (ETag) or generation. So new,
removed, renamed or rewritten files re-run ExampleGen; but a local file
rewritten in place with the same size and the same modification time (e.g.
restored with `os.utime` or `touch -d`) is not noticed and the cached output
is reused: touch the file (a new modification time) or run with `--no-cache`.

The modules: `config` (the dataclasses above), `inputs` (resolving the
files, fingerprints, input errors), `hashing` (split assignment),
`csv_input`, `parquet_input`, `tfrecord_input` (planning and reading each
format), `pipeline` (the Beam pipelines) and `components` (the components and
executors). Only `config`, `inputs` and `components` are imported with the
package (none imports pyarrow or Beam); the others when an executor runs.
"""

from __future__ import annotations

from conveyor.components.example_gen.components import (
    CsvExampleGen,
    CsvExampleGenParams,
    ImportExampleGen,
    ImportExampleGenParams,
    run_csv,
    run_import,
)
from conveyor.components.example_gen.config import (
    Input,
    InputConfig,
    InputSplit,
    Output,
    OutputConfig,
    SplitBucket,
    SplitConfig,
)
from conveyor.components.example_gen.inputs import ResolvedInput, resolve_input

__all__ = [
    "InputSplit",
    "Input",
    "InputConfig",
    "SplitBucket",
    "SplitConfig",
    "Output",
    "OutputConfig",
    "CsvExampleGen",
    "CsvExampleGenParams",
    "ImportExampleGen",
    "ImportExampleGenParams",
    "ResolvedInput",
    "resolve_input",
    "run_csv",
    "run_import",
]

# The public home of these names (MLMD type names, cache keys and the
# compiled IR name components by module and class).
for _cls in (CsvExampleGen, ImportExampleGen, CsvExampleGenParams, ImportExampleGenParams):
    _cls.__module__ = __name__
del _cls
