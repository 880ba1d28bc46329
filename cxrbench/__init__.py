"""cxrbench: evaluation suite and reference generators for generative chest X-ray models."""

from .version import __version__  # noqa: F401


def __getattr__(name):
    # Lazy so that `import cxrbench` (and `cxrbench ls`) does not import torch models.
    if name in ("evaluate", "evaluate_generator", "EvalConfig"):
        from .engine import evaluate as harness

        return getattr(harness, name)
    raise AttributeError(name)
