"""Moved to ``cxrbench.data.synthetic``; this name stays importable (the same module object, so private names and
monkeypatching reach the real one)."""

import sys

from .data import synthetic as _module

sys.modules[__name__] = _module
