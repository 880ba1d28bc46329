"""Re-identification against memorization on real NIH images (``tests/reid_sets.py`` builds the sets).

For each set of "generated" images, both privacy scores against the same training set: ``reid`` (share whose
best same-patient probability exceeds 0.5, and the mean of those maxima) and ``memorization_cxr128`` (share nearer
to a training image, in the cxr128 embedding, than the 5th percentile of held-out real images). The reference
(real images of other patients) gives each its real-vs-real level.

    OMP_NUM_THREADS=1 python tests/benchmarks/reid_vs_memorization.py [--reid-weights FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cxrbench.config import MetricSettings
from cxrbench.features.cxr128 import CXR128Extractor
from cxrbench.metrics.base import EvalContext
from cxrbench.metrics.memorization import Memorization
from cxrbench.metrics.reid import ReID
from tests.metric_helpers import shared_data
from tests.reid_sets import NEAR_COPY_KINDS, build_sets, feature_set, near_copies


def scores(gen, ref, train, st):
    ctx = EvalContext(gen=gen, ref=ref, train=train, extractors={"cxr128": {"name": "cxr128", "kind": "embedding"}},
                      config=st)
    r = ReID().compute(ctx)
    m = Memorization().compute(ctx)["memorization_cxr128"]
    return r["reid"], r["reid_mean"], m


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reid-weights", default="cxrbench")
    ap.add_argument("--n-bootstrap", type=int, default=200)
    a = ap.parse_args(argv)
    t0 = time.time()
    data = shared_data()
    if data is None:
        print("needs ../shared/data (CXRBENCH_SHARED_DATA)", file=sys.stderr)
        return 2
    sets = build_sets(data)
    ext = CXR128Extractor()
    st = MetricSettings(n_bootstrap=a.n_bootstrap, reid_weights=a.reid_weights)
    train = feature_set("train", sets["train"]["images"], ext, patients=sets["train"]["patients"])
    ref = feature_set("reference", sets["reference"]["images"], ext, patients=sets["reference"]["patients"])
    rows = [("(a) held-out patients' real images", sets["heldout"]["images"]),
            ("(c) other images of training patients", sets["same_patient"]["images"])]
    n_multi = sets["n_train_patients_with_more_images"]
    rows += [(f"(b) near-copies: {k}", near_copies(sets["train"]["images"][:n_multi], k)) for k in NEAR_COPY_KINDS]
    print(f"train {len(train)} images ({n_multi} of patients with more images), reference {len(ref)} "
          f"(other patients); reid network: {a.reid_weights}\n")
    print("| generated set | N | reid (share > 0.5) [95% CI] | reid_mean | memorization_cxr128 [95% CI] |")
    print("|---|---|---|---|---|")
    for name, imgs in rows:
        gen = feature_set("samples", imgs, ext)
        r, rm, m = scores(gen, ref, train, st)
        print(f"| {name} | {len(imgs)} | {r.value:.3f} [{r.ci[0]:.3f}, {r.ci[1]:.3f}] | {rm.value:.3f} | "
              f"{m.value:.3f} [{m.ci[0]:.3f}, {m.ci[1]:.3f}] |")
    print(f"| real-vs-real (reference vs train) | {len(ref)} | {r.real_vs_real:.3f} | {rm.real_vs_real:.3f} | "
          f"{m.real_vs_real:.3f} (halves) |")
    print(f"\n{time.time() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
