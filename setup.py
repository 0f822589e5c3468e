"""Installs the reproduction's packages: model, data, stats, report, reproduce."""
from setuptools import find_packages, setup

setup(
    name="wsi-micromet-repro",
    version="0.1.0",
    description=("Reproduction of annotation-free whole-slide ResNet-50 detection of nodal "
                 "micrometastasis in colorectal cancer (Modern Pathology, 2021) on TF 1.15.3 + "
                 "Horovod 0.19.0"),
    python_requires=">=3.7,<3.8",
    packages=find_packages(include=["model", "model.*", "data", "data.*", "stats", "stats.*",
                                    "report", "report.*", "reproduce", "reproduce.*"]),
    package_data={"reproduce": ["*.yaml"], "stats": ["*.csv"]},  # stats/paper_values.csv
    entry_points={"console_scripts": ["reproduce=reproduce.__main__:main"]},
)
