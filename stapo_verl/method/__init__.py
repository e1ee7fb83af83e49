"""The method: S2T and 20-Entropy as pure tensor functions (``s2t``), the registered policy
losses (``losses``) and their typed config (``config``). Nothing here touches verl's runtime.
"""
