"""Moved to ``cxrbench.engine.distributed``; this name stays importable (the same module object, so private names and
monkeypatching reach the real one)."""

import sys

from .engine import distributed as _module

sys.modules[__name__] = _module
