"""A Beam worker plugin: imported by each Beam SDK worker at start-up when a
node's flags hold `--beam_plugins=conveyor.beam_worker` (Conveyor adds it for
nodes that touch s3://).

TensorFlow reads s3:// only once tensorflow-io is imported; in the driver
`conveyor.fs.enable_tensorflow` does that, but a remote worker (a portable
runner's, Dataflow's, or the DirectRunner's worker processes) imports
nothing of Conveyor before it runs a DoFn that loads a SavedModel or a
tf.Transform graph from s3://. Importing this module on a worker registers
the filesystem there, configured from the worker's AWS environment, makes
Beam's S3 filesystem there reuse its boto3 clients, and cuts Beam's fixed
costs per bundle there as in the node's process (`beam_tuning`).
"""

from __future__ import annotations

from conveyor import fs
from conveyor.components import beam_tuning

__all__: list[str] = []

fs.enable_tensorflow(["s3://"])
fs.share_beam_s3_clients()
beam_tuning.apply()
