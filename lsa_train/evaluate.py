"""``python -m lsa_train.evaluate ckpt_path=...``: robustness evaluation of a trained run.

A short alias of :mod:`lsa_train.app.evaluate` (also the console script ``lsa-evaluate``).
"""

from lsa_train.app.evaluate import main

if __name__ == "__main__":
    main()
