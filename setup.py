"""Package discovery only; all metadata lives in pyproject.toml.

The top-level ``conf/`` folder is shipped as the package ``lsa_train.conf`` (see
``[tool.setuptools.package-dir]``), so Hydra finds the configs through
``pkg://lsa_train.conf`` after a plain, non-editable ``pip install .``.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["lsa_train", "lsa_train.*"]), "lsa_train.conf"])
