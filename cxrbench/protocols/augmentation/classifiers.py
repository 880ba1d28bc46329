"""The classifiers the protocol trains for every mode and seed (registered in ``registry.CLASSIFIERS``): a
linear probe on frozen features, a small CNN and a fine-tuned torchxrayvision DenseNet121."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from ...errors import UsageError
from ...features.xrv import build_densenet
from ...registry import CLASSIFIERS
from ...seeding import torch_generator
from .config import AugmentConfig


class AugmentClassifier:
    """A classifier the protocol trains for every mode and seed; registered in ``registry.CLASSIFIERS``.

    ``inputs``: ``"features"`` (rows of the frozen extractor) or ``"images"`` (``image_size`` px squares);
    ``fit`` returns P(class 1) for each test input. ``uses_weights``: initialised from ``weights``, so random
    weights make the result incomparable.
    """

    inputs: ClassVar[str] = "images"
    image_size: ClassVar[int] = 64
    uses_weights: ClassVar[bool] = False

    def fit(self, x_tr, y_tr, x_te, *, seed: int, cfg: AugmentConfig, device: str) -> np.ndarray:
        raise NotImplementedError


class LinearProbe(AugmentClassifier):
    """Logistic regression on standardised frozen features (``CLASSIFIERS["linear"]``)."""

    inputs = "features"

    def fit(self, x_tr, y_tr, x_te, *, seed: int, cfg: AugmentConfig, device: str) -> np.ndarray:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(x_tr)
        # Newton steps to a gradient of 1e-8 (quadratic convergence puts the scores ~1e-11 from the optimum; at
        # 1e-12 the line search runs out of float precision and falls back to lbfgs): the L2-penalised loss has
        # one minimum, and reaching it makes the scores a function of the data alone. lbfgs stopped at its default
        # tol 1e-4, where the path (and so the CPU's BLAS kernel) decides the last digits, and one near-tied test
        # pair flipped an entry's AUROC on another CPU.
        clf = LogisticRegression(C=cfg.c, solver="newton-cholesky", tol=1e-8, max_iter=200, random_state=seed)
        clf.fit(scaler.transform(x_tr), y_tr)
        return clf.predict_proba(scaler.transform(x_te))[:, 1]


class SmallCNN(torch.nn.Module):
    """Four stride-2 conv blocks, global average pool, one logit: a from-scratch baseline at 64 px."""

    def __init__(self, width: int = 16):
        super().__init__()
        layers, c = [], 1
        for k in (width, 2 * width, 4 * width, 4 * width):
            layers += [torch.nn.Conv2d(c, k, 3, stride=2, padding=1), torch.nn.BatchNorm2d(k), torch.nn.ReLU()]
            c = k
        self.body = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = torch.nn.Linear(c, 1)

    def forward(self, x):
        return self.head(self.body(x * 2 - 1)).squeeze(1)


class _XRVBinary(torch.nn.Module):
    """torchxrayvision DenseNet121 body (published weights when available) with a fresh one-logit head."""

    def __init__(self, weights: str, seed: int):
        super().__init__()

        self.net, self.weights_id, _ = build_densenet(weights, seed)
        torch.manual_seed(seed)
        self.head = torch.nn.Linear(1024, 1)

    def forward(self, x):
        return self.head(self.net.features2(x * 2048.0 - 1024.0)).squeeze(1)


class TorchClassifier(AugmentClassifier):
    """A network trained from ``build`` with Adam and BCE; ``epochs`` / ``lr`` unless the config sets them."""

    epochs: ClassVar[int] = 15
    lr: ClassVar[float] = 1e-3

    def build(self, cfg: AugmentConfig, seed: int) -> torch.nn.Module:
        raise NotImplementedError

    def fit(self, x_tr, y_tr, x_te, *, seed: int, cfg: AugmentConfig, device: str) -> np.ndarray:
        return _train_torch(self, x_tr, y_tr, x_te, seed=seed, cfg=cfg, device=device)


class CNNClassifier(TorchClassifier):
    """``CLASSIFIERS["cnn"]``: ``SmallCNN`` from scratch at 64 px."""

    def build(self, cfg: AugmentConfig, seed: int) -> torch.nn.Module:
        return SmallCNN()


class DenseNetClassifier(TorchClassifier):
    """``CLASSIFIERS["densenet"]``: torchxrayvision DenseNet121 fine-tuned at 224 px."""

    image_size = 224
    uses_weights = True
    epochs = 5
    lr = 1e-4

    def build(self, cfg: AugmentConfig, seed: int) -> torch.nn.Module:
        return _XRVBinary(cfg.weights, seed)


def _classifier(name: str) -> AugmentClassifier:
    if name not in CLASSIFIERS:
        raise UsageError(f"--classifier {name!r}: expected one of {', '.join(CLASSIFIERS.names())}")
    return CLASSIFIERS.get(name)()


def _fit_torch(x_tr: torch.Tensor, y_tr: np.ndarray, x_te: torch.Tensor, *, seed: int, cfg: AugmentConfig,
               device: str) -> np.ndarray:
    """``cfg.classifier`` (an image classifier) trained on ``x_tr`` and applied to ``x_te``."""
    return _classifier(cfg.classifier).fit(x_tr, y_tr, x_te, seed=seed, cfg=cfg, device=device)


def _train_torch(clf: TorchClassifier, x_tr: torch.Tensor, y_tr: np.ndarray, x_te: torch.Tensor, *, seed: int,
                 cfg: AugmentConfig, device: str) -> np.ndarray:
    epochs = cfg.epochs if cfg.epochs is not None else clf.epochs
    lr = cfg.lr if cfg.lr is not None else clf.lr
    torch.manual_seed(seed)
    model = clf.build(cfg, seed).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch_generator(seed)
    yt = torch.as_tensor(y_tr, dtype=torch.float32)
    bs = cfg.batch_size
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x_tr), generator=g)
        for b in range(0, len(perm), bs):
            j = perm[b : b + bs]
            if len(j) < 2:  # BatchNorm cannot train on one image
                continue
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                model(x_tr[j].to(device)), yt[j].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        out = [torch.sigmoid(model(x_te[b : b + 2 * bs].to(device))).cpu() for b in range(0, len(x_te), 2 * bs)]
    return torch.cat(out).numpy().astype(np.float64)
