"""Moved to ``cxrbench.data.labels``; this name stays importable (the same module object, so private names and
monkeypatching reach the real one)."""

import sys

from .data import labels as _module

sys.modules[__name__] = _module
