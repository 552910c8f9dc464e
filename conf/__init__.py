"""Hydra configs of lsa_train, shipped in the wheel as the package ``lsa_train.conf``.

Loaded with ``config_path="pkg://lsa_train.conf"``. Importing this package registers the structured
schemas the YAML files refer to (``/schema/attack``, ``/schema/mvl``), so that Hydra's compose API
works without importing the app first.
"""

from lsa_train.app import run_dirs as _run_dirs
from lsa_train.app import schemas as _schemas  # noqa: F401 (registers the schemas)

_run_dirs.register_resolvers()  # the run-dir resolvers of hydra/default.yaml, evaluate.yaml, analyze.yaml
