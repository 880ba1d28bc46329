"""Moved to ``cxrbench.engine.reference_stats``; this name stays importable (the same module object, so private names and
monkeypatching reach the real one)."""

import sys

from .engine import reference_stats as _module

sys.modules[__name__] = _module
