"""Conveyor: a TFX-style ML pipeline framework. Install with the repo's
constraints file: pip install -c constraints.txt -e .[test]"""

from setuptools import find_packages, setup

setup(
    name="conveyor",
    version="0.1.0",
    description="TFX-style ML pipelines on Apache Beam and ML Metadata",
    packages=find_packages(include=["conveyor", "conveyor.*"]),
    python_requires=">=3.9,<3.12",
    install_requires=[
        "tensorflow",
        "tf-keras",
        "tensorflow-data-validation",
        "tensorflow-transform",
        "tensorflow-model-analysis",
        "ml-metadata",
        "tfx-bsl",
        "tensorflow-metadata",
        "tensorflow-serving-api",
        "apache-beam[gcp,aws]",
        "tensorflow-io",
        "pyarrow",
        "protobuf",
        "numpy",
        "pandas",
        "rich",
    ],
    extras_require={"test": ["pytest", "ruff", "playwright"]},
    entry_points={"console_scripts": ["conveyor=conveyor.cli:entry"]},
)
