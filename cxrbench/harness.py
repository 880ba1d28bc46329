"""Moved to ``cxrbench.engine.evaluate``; this name stays importable (the same module object, so private names and
monkeypatching reach the real one)."""

import sys

from .engine import evaluate as _module

sys.modules[__name__] = _module
