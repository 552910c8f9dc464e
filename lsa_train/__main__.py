"""``python -m lsa_train``: the Hydra training app (same as the ``lsa-train`` console script)."""

import sys

from lsa_train.app.train import main

if __name__ == "__main__":
    sys.exit(main())
