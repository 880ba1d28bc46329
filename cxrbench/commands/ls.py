"""``cxrbench ls``: what is registered (built in, bundled baselines and outside plug-ins)."""

from __future__ import annotations

from ..registry import CLASSIFIERS, EXTRACTORS, GENERATORS, METRICS, PROTOCOLS, REFERENCES, REPRESENTATIONS

EPILOG = "example:\n  cxrbench ls\n"


def add_arguments(p) -> None:
    p.add_argument("what", nargs="?", choices=["extractors", "metrics", "generators", "representations",
                                              "protocols", "classifiers", "references"], help="only this registry")


def run(args) -> int:
    regs = {"extractors": EXTRACTORS, "metrics": METRICS, "generators": GENERATORS,
            "representations": REPRESENTATIONS, "protocols": PROTOCOLS, "classifiers": CLASSIFIERS, "references": REFERENCES}
    for name, reg in regs.items():
        if args.what and args.what != name:
            continue
        print(f"{name}:")
        for n in reg.names():
            print(f"  {n}")
    return 0
