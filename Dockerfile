# The Beam SDK worker image for Conveyor pipelines: Beam's Python 3.11 SDK
# container with the Conveyor stack (TensorFlow, TFDV, TFT, TFMA, tfx-bsl,
# tensorflow-io, conveyor) installed at the versions of constraints.txt.
#
# It holds no user code: Conveyor stages each run's module files under the
# pipeline root (<root>/_code/<hash>/...), which must be on s3:// or gs:// so
# the workers can read them.
#
#   docker build -t REGISTRY/conveyor-worker:TAG .
#   docker push REGISTRY/conveyor-worker:TAG
#
#   Dataflow:      --sdk_container_image=REGISTRY/conveyor-worker:TAG
#   Flink, Spark:  --environment_type=DOCKER --environment_config=REGISTRY/conveyor-worker:TAG
#   Worker pool:   docker run -p 50000:50000 REGISTRY/conveyor-worker:TAG --worker_pool
#                  (then --environment_type=EXTERNAL --environment_config=HOST:50000)
#
# The Beam version here (2.61.0) must be the one the pipeline is submitted
# with: constraints.txt pins the same one.
FROM apache/beam_python3.11_sdk:2.61.0

# Only what installing the package needs: no tests, examples or benchmarks.
COPY constraints.txt setup.py /tmp/conveyor-src/
COPY conveyor/ /tmp/conveyor-src/conveyor/

# A regular (not editable) install into the image's Python; the source is
# removed afterwards. The import line fails the build if the stack is broken
# or pip replaced the image's Beam with another version.
RUN pip install --no-cache-dir -c /tmp/conveyor-src/constraints.txt /tmp/conveyor-src \
    && rm -rf /tmp/conveyor-src \
    && python -c "import apache_beam, conveyor.components.transform, tensorflow_transform, tensorflow_model_analysis, tensorflow_data_validation, tensorflow_io; assert apache_beam.__version__ == '2.61.0', apache_beam.__version__"

# One Keras for every component (see conveyor.components.base.use_keras_2):
# TFMA's and tf.Transform's DoFns load Keras 2 models on the workers.
ENV TF_USE_LEGACY_KERAS=1

# The base image's ENTRYPOINT (/opt/apache/beam/boot) stays: runners start
# SDK workers through it, and it runs the worker pool with --worker_pool.
