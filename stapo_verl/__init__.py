"""STAPO (arXiv 2602.15620) and 20-Entropy for verl.

Nothing is imported here: verl loads :mod:`stapo_verl.plugin` itself (entry point group
``verl.plugins``), and :mod:`stapo_verl.method.s2t` works without verl's runtime.
"""

__version__ = "0.1.0"
