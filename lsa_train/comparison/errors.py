"""The one error type of :mod:`lsa_train.comparison`."""

from __future__ import annotations


class CompareError(ValueError):
    """Bad input for a comparison (a missing folder, an unknown key, no pairs, ...).

    The message is one line; ``lsa-compare`` prints it and exits with code 2.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
