"""cxrbench: evaluation suite and reference generators for generative chest X-ray models."""

from .version import __version__  # noqa: F401


def __getattr__(name):
    if name in ("evaluate", "evaluate_generator", "EvalConfig"):
        # why: lazy, so that `import cxrbench` (run by every `import cxrbench.X`) does not import torch models
        from .engine import evaluate as harness

        return getattr(harness, name)
    raise AttributeError(name)
