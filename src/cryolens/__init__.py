"""cryolens: cryo-EM single-particle analysis in Python.

Layers (imports point downward only): ``cli``/``report`` -> ``project`` -> ``jobs``
-> stages (``simulate``, ``reconstruct``, ...) -> ``core`` -> ``io``/``errors``.
"""

__version__ = "0.1.0"
