"""The ``cryolens`` program: the command line imported with the cyclic garbage collector paused, and only
the invoked command's modules (:func:`cryolens.cli.main.build_app`).

Importing torch, pandas and the commands creates about a million Python objects; the collector's
full passes over them while they are created took 0.25-0.4 s of every command's start-up (measured:
``import torch`` plus the command line 1.67-2.10 s with the collector, 1.29-1.62 s without, on
this 2-core machine). After the imports the collector runs again, with the imported objects frozen
(:func:`gc.freeze`: they live as long as the process anyway), so its later passes skip them too.
"""

from __future__ import annotations

import gc
import sys

__all__ = ["run"]


def run():
    """Run the ``cryolens`` command (the console script)."""
    first = sys.argv[1] if len(sys.argv) > 1 else None
    gc.disable()
    try:
        from cryolens.cli.main import build_app

        app = build_app(first if first and not first.startswith("-") else None)
    finally:
        gc.freeze()
        gc.enable()
    return app()
