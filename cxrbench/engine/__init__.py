"""The evaluation engine: configuration-driven feature extraction (``extraction``), one evaluation pass
(``evaluate``), reference statistics, torchrun support and result
provenance."""
