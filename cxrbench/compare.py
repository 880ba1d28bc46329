"""Moved to ``cxrbench.publish.compare``; this name stays importable (the same module object, so private names and
monkeypatching reach the real one)."""

import sys

from .publish import compare as _module

sys.modules[__name__] = _module
