"""``python -m lsa_train.analyze ckpt_path=...``: per-layer LSA curves of a trained run.

A short alias of :mod:`lsa_train.app.analyze` (also the console script ``lsa-analyze``).
"""

from lsa_train.app.analyze import main

if __name__ == "__main__":
    main()
