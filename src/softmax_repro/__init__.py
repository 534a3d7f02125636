"""Softmax, Reproduced: the shared library behind the reproducibility report.

Every chapter of the book calls into this package; nothing that trains, evaluates or decides a
verdict lives in a notebook.
"""

__version__ = "0.1.0"
