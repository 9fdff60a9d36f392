"""Notebooks run under pytest (``--nbmake``) in their fast mode: small data, few steps.

Each notebook reads ``ODEJAX_FAST`` in its first cell; the kernels nbmake starts inherit this
process's environment. Run a notebook in full mode (the saved figures) with
``jupyter nbconvert --execute --inplace`` or from Jupyter, without ``ODEJAX_FAST``.
"""

import os

os.environ.setdefault("ODEJAX_FAST", "1")
