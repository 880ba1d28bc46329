"""The registered protocol (``PROTOCOLS["augmentation"]``) and the figure of a run."""

from __future__ import annotations

import numpy as np

from ...data.imageset import ImageSource
from ...engine.protocol import Protocol
from ...errors import UsageError
from ...features.base import FeatureKind
from ...metrics.base import MetricValue
from .config import MODES, OUTPUTS, PROTOCOL_NAME, PROTOCOL_VERSION, AugmentConfig, AugmentOutcome
from .run import run_augmentation


class AugmentationProtocol(Protocol):
    """Registry entry ``PROTOCOLS["augmentation"]``: metadata plus :func:`run_augmentation`."""

    name = PROTOCOL_NAME
    version = PROTOCOL_VERSION
    adds_metrics = True
    outputs = OUTPUTS
    Config = AugmentConfig

    def run(self, real, synthetic, *, task: str, config: AugmentConfig | None = None, **kwargs):
        return run_augmentation(real, synthetic, task=task, config=config, **kwargs)

    def after_metrics(self, ctx, sources: dict[str, ImageSource]) -> dict[str, MetricValue]:
        """The harness's hook (``evaluate --protocol augmentation``): the reference is the real set, the samples
        the synthetic one; the linear probe reuses the harness's features of the first embedding extractor."""
        config = ctx.config
        if not config.augment.task:
            raise UsageError("--protocol augmentation needs --augment-task 'A vs B' (labels come from the reference)")
        emb = next((e for e in config.extractors if ctx.extractors[e].get("kind") == FeatureKind.EMBEDDING), None)
        if emb is None:
            raise UsageError("--protocol augmentation needs an embedding extractor (e.g. xrv) in --extractors")
        return self.run(sources["reference"], sources["samples"], task=config.augment.task,
                        config=AugmentConfig.from_eval(config, extractor=emb, device=ctx.device),
                        real_features=ctx.ref.features[emb], synthetic_features=ctx.gen.features[emb])


def figure(outcome: AugmentOutcome, path) -> None:
    """Per-mode AUROC and accuracy: one dot per seed, mean with the bootstrap 95% CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, stat in zip(axes, ("auroc", "accuracy")):
        for j, m in enumerate(MODES):
            mv = outcome.metrics[f"aug_{m}_{stat}"]
            seeds = mv.extra["per_seed"]
            ax.scatter(np.full(len(seeds), j) + np.linspace(-0.12, 0.12, len(seeds)), seeds, s=14, alpha=0.6,
                       color="tab:gray", zorder=2)
            lo, hi = mv.ci if mv.ci else (mv.value, mv.value)
            ax.errorbar([j], [mv.value], yerr=[[mv.value - lo], [hi - mv.value]], fmt="o", color="tab:blue",
                        capsize=4, zorder=3)
        ax.axhline(outcome.metrics[f"aug_real_{stat}"].value, color="tab:blue", lw=0.8, ls="--")
        ax.set_xticks(range(len(MODES)), MODES)
        ax.set_ylabel(stat.upper() if stat == "auroc" else stat)
        g = outcome.metrics[f"aug_gain_{stat}"]
        ci = f" [{g.ci[0]:+.3f}, {g.ci[1]:+.3f}]" if g.ci else ""
        ax.set_title(f"gain (augmented - real) {g.value:+.3f}{ci}", fontsize=9)
    t = outcome.details["task"]
    fig.suptitle(f"{t['positive']} vs {t['negative']}: {outcome.details['classifier']} classifier, "
                 f"{len(outcome.metrics['aug_real_auroc'].extra['per_seed'])} seeds, "
                 f"{outcome.details['n_test']} real test images", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
