"""Registries refuse taken names and wrong types, and warn when an entry point shadows a built-in."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest

from cxrbench import registry as reg
from cxrbench.errors import UsageError
from cxrbench.features.base import FeatureExtractor
from cxrbench.features.random_conv import RandomConvExtractor
from cxrbench.registry import EXTRACTORS, METRICS, PROTOCOLS, Registry


class Tiny(FeatureExtractor):
    name = "tiny"


class Other(FeatureExtractor):
    name = "other"


class NotAnExtractor:
    pass


def fake_entry_points(*eps):
    """Stand-in for importlib.metadata.entry_points: (name, value, distribution) triples for any group."""
    return lambda group: [SimpleNamespace(name=n, value=v, dist=SimpleNamespace(name=d)) for n, v, d in eps]


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(reg, "entry_points", fake_entry_points())
    return Registry("feature extractor", "test.group",
                    {"random-conv": "cxrbench.features.random_conv:RandomConvExtractor"},
                    base="cxrbench.features.base:FeatureExtractor")


def test_a_taken_name_is_refused_naming_both_objects(fresh):
    fresh.add("tiny", Tiny)
    fresh.add("tiny", Tiny)  # the same object again is not a collision
    with pytest.raises(ValueError, match=r"'tiny' is already taken by .*Tiny.*cannot register .*Other"):
        fresh.add("tiny", Other)
    with pytest.raises(UsageError, match="already taken"):
        fresh.register("x", "tiny")(Other)
    assert fresh.get("tiny") is Tiny
    # a built-in's lazy string and the class it names are one entry; another class under that name is not
    fresh.add("random-conv", RandomConvExtractor)
    with pytest.raises(UsageError, match=r"'random-conv' is already taken by .*RandomConvExtractor.*built-in"):
        fresh.add("random-conv", Tiny)
    with pytest.raises(UsageError, match="already taken"):
        fresh.add("random-conv", "some.module:Thing")
    assert fresh.get("random-conv") is RandomConvExtractor


def test_objects_that_are_not_subclasses_of_the_base_are_refused(fresh):
    with pytest.raises(UsageError, match=r"NotAnExtractor is not a subclass of .*FeatureExtractor"):
        fresh.add("bad", NotAnExtractor)
    with pytest.raises(UsageError, match="not a subclass"):
        fresh.add("bad", Tiny())  # an instance, not a class
    assert "bad" not in fresh
    # a lazy "module:attr" is checked when resolved, and stays refused
    fresh.add("lazy", "tests.test_registry:NotAnExtractor")
    for _ in range(2):
        with pytest.raises(UsageError, match="'lazy'.*not a subclass"):
            fresh.get("lazy")
    fresh.add("lazy-ok", "tests.test_registry:Tiny")
    assert fresh.get("lazy-ok") is Tiny
    # a registry without a declared base takes any object
    free = Registry("protocol", "test.group")
    free.add("anything", NotAnExtractor)
    assert free.get("anything") is NotAnExtractor


def test_an_entry_point_shadowing_a_builtin_warns_once_and_the_builtin_wins(monkeypatch):
    monkeypatch.setattr(reg, "entry_points", fake_entry_points(
        ("random-conv", "tests.test_registry:Tiny", "evil-plugin"),
        ("tiny", "tests.test_registry:Tiny", "good-plugin"),
        ("same", "tests.test_registry:Other", "dup-plugin"),
    ))
    r = Registry("feature extractor", "test.group",
                 {"random-conv": "cxrbench.features.random_conv:RandomConvExtractor",
                  "same": "tests.test_registry:Other"},  # the entry point names the very same object: no warning
                 base="cxrbench.features.base:FeatureExtractor")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = r.names()
        r.names(), r.get("random-conv"), "tiny" in r
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1, msgs
    assert "evil-plugin" in msgs[0] and "'random-conv'" in msgs[0] and "tests.test_registry:Tiny" in msgs[0]
    assert names == ["random-conv", "same", "tiny"]
    assert r.get("random-conv") is RandomConvExtractor and r.get("tiny") is Tiny
    # an explicit registration may not take a name an installed plug-in holds
    with pytest.raises(UsageError, match=r"'tiny' is already taken by 'tests.test_registry:Tiny' \(entry point of "
                                         r"good-plugin\)"):
        Registry("feature extractor", "test.group", base="cxrbench.features.base:FeatureExtractor").add("tiny", Other)


def test_every_builtin_resolves_to_its_registrys_base_class():
    # (the bundled baselines' entry points are checked by GeneratorTesterMixin.test_registry_resolution)
    for registry in (EXTRACTORS, METRICS, PROTOCOLS):
        base = registry._base_class()
        for name in [n for n, origin in registry._origin.items() if origin == "built-in"]:
            obj = registry.get(name)  # runs the check
            assert base is None or issubclass(obj, base), (registry.kind, name)
    assert EXTRACTORS._base_class() is FeatureExtractor and len(EXTRACTORS._origin) >= 6


def test_ls_lists_every_registry_including_classifiers(capsys):
    from cxrbench.cli import main
    from cxrbench.registry import CLASSIFIERS

    assert main(["ls", "classifiers"]) == 0
    shown = [line.strip() for line in capsys.readouterr().out.splitlines()[1:]]
    assert shown == CLASSIFIERS.names() and "linear" in shown
