"""The evaluation engine: configuration-driven feature extraction (``extraction``), one evaluation pass
(``evaluate``, also importable as ``cxrbench.harness``), reference statistics, torchrun support and result
provenance."""
