"""The Hydra app: ``train`` (``python -m lsa_train`` / ``lsa-train``), its config schemas and checks.

This is the only layer that reads configs; everything below it takes plain arguments. Importing
this package is cheap (no torch, no Lightning): the heavy modules load in :mod:`lsa_train.app.train`.
"""
