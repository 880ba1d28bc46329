"""Published-weights handling: historical module pickles read without running code, a weights mirror on
127.0.0.1, the Inception hash pin, and which results are comparable."""

from __future__ import annotations

import copyreg
import functools
import hashlib
import http.server
import os
import pickle
import subprocess
import sys
import threading
import types
import zipfile

import pytest
import torch

from cxrbench.data.synthetic import synthetic_cxr
from cxrbench.errors import WeightsError

# --------------------------------------------------------------------------------------------------------
# Synthetic legacy module pickles
# --------------------------------------------------------------------------------------------------------


def tiny_densenet(seed: int):
    import torchxrayvision as xrv

    torch.manual_seed(seed)
    net = xrv.models.DenseNet(weights=None, growth_rate=4, block_config=(1, 1, 1, 1), num_init_features=8).eval()
    with torch.no_grad():  # statistics away from the init, so a buffer that failed to load would show
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net


def _thnn_backend_module():
    """What PyTorch < 1.0 pickled as every module's ``_backend``: a REDUCE of a function that no longer exists."""
    mod = types.ModuleType("torch.nn.backends.thnn")

    def _get_thnn_function_backend():
        return "thnn backend"

    _get_thnn_function_backend.__module__ = mod.__name__
    _get_thnn_function_backend.__qualname__ = "_get_thnn_function_backend"
    mod._get_thnn_function_backend = _get_thnn_function_backend

    class THNNFunctionBackend:
        def __reduce__(self):
            return (_get_thnn_function_backend, ())

    mod.THNNFunctionBackend = THNNFunctionBackend
    return mod


def save_module_pickle(net, path, *, legacy: bool, edit_state=None, old_parameters=False):
    """``torch.save(net)`` with each module's pickled ``__dict__`` passed through ``edit_state`` (how an
    older PyTorch's modules looked), in the zip or the legacy non-zip format; ``old_parameters``: parameters
    reduced as PyTorch < 0.4 did, ``Parameter(data, requires_grad)``."""

    class OldStylePickler(pickle.Pickler):
        def reducer_override(self, obj):
            if isinstance(obj, torch.nn.Module) and edit_state is not None:
                return copyreg.__newobj__, (type(obj),), edit_state(dict(obj.__dict__))
            if isinstance(obj, torch.nn.Parameter) and old_parameters:
                return torch.nn.Parameter, (obj.data, obj.requires_grad)
            return NotImplemented

    pickle_module = types.ModuleType("oldstyle_pickle")
    pickle_module.Pickler, pickle_module.dump = OldStylePickler, pickle.dump
    torch.save(net, path, pickle_module=pickle_module, _use_new_zipfile_serialization=not legacy)
    return path


def _extra_attribute_and_submodule(net):
    net.training_note = "trained with lr 0.001"  # an attribute the current class never sets
    net.aux_head = torch.nn.Linear(3, 2)  # a submodule the current class lacks


def _no_buffers_set(state):
    state.pop("_non_persistent_buffers_set", None)  # added in PyTorch 1.6
    return state


def _thnn_and_no_buffers_set(state):
    state = _no_buffers_set(state)
    state["_backend"] = sys.modules["torch.nn.backends.thnn"].THNNFunctionBackend()
    return state


SHAPES = {  # name: (change to the module, edit of each pickled __dict__, pre-0.4 parameters)
    "extra-attribute-and-submodule": (_extra_attribute_and_submodule, None, False),
    "no-non-persistent-buffers-set": (None, _no_buffers_set, False),
    "thnn-backend-global": (None, _thnn_and_no_buffers_set, False),
    "pre-0.4-parameters": (None, _thnn_and_no_buffers_set, True),
}


@pytest.fixture
def thnn(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.nn.backends.thnn", _thnn_backend_module())


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-non-zip"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_historical_module_pickles_give_the_state_dict_features(tmp_path, thnn, shape, legacy):
    from cxrbench.features.xrv import load_xrv_weights

    ref = tiny_densenet(1)
    sd_path = tmp_path / "state.pt"
    torch.save(ref.state_dict(), sd_path)
    mutate, edit, old_parameters = SHAPES[shape]
    pickled = tiny_densenet(1)
    if mutate:
        mutate(pickled)
    path = save_module_pickle(pickled, tmp_path / "module.pt", legacy=legacy, edit_state=edit,
                              old_parameters=old_parameters)
    raw = path.read_bytes()
    assert zipfile.is_zipfile(path) is not legacy
    pkl = raw if legacy else zipfile.ZipFile(path).read("module/data.pkl")
    if edit is _thnn_and_no_buffers_set:
        assert b"torch.nn.backends.thnn" in pkl
    assert (b"torch.nn.parameter\nParameter" in pkl) is old_parameters
    assert (b"_rebuild_parameter" in pkl) is not old_parameters
    if shape != "extra-attribute-and-submodule":  # really the pre-1.6 layout: no module carries the set
        from cxrbench.features.legacy_pickle import load_pickle

        stack = [load_pickle(path)]
        while stack:
            attrs = stack.pop().attributes()
            assert "_non_persistent_buffers_set" not in attrs and "_parameters" in attrs
            stack += [m for m in attrs["_modules"].values() if m is not None]
    sys.modules.pop("torch.nn.backends.thnn", None)  # as today: the old module is gone when loading

    got, want = tiny_densenet(7), tiny_densenet(8)  # different random weights before loading
    if shape == "extra-attribute-and-submodule":
        with pytest.warns(UserWarning, match=r"ignored 2 tensor\(s\).*aux_head"):
            load_xrv_weights(got, path)
    else:
        load_xrv_weights(got, path)
    load_xrv_weights(want, sd_path)
    x = synthetic_cxr(2, 64, seed=3) * 2048 - 1024
    with torch.no_grad():
        a, b = got.features2(x), want.features2(x)
    assert torch.equal(a, b) and torch.equal(b, ref.features2(x))
    for k, v in ref.state_dict().items():
        assert torch.equal(got.state_dict()[k], v), k


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-non-zip"])
def test_pickle_protocol_1_module_reads_through_copyreg_reconstructor(tmp_path, legacy):
    """Protocol 0/1 pickles rebuild plain objects with copyreg._reconstructor(cls, object, None)."""
    from cxrbench.features.legacy_pickle import state_dict_from_file

    net = tiny_densenet(1)
    path = tmp_path / "p1.pt"
    torch.save(net, path, pickle_protocol=1, _use_new_zipfile_serialization=not legacy)
    assert b"_reconstructor" in (path.read_bytes() if legacy else zipfile.ZipFile(path).read("p1/data.pkl"))
    state, kind = state_dict_from_file(path)
    ref = net.state_dict()
    assert kind == "module" and list(state) == list(ref) and all(torch.equal(state[k], ref[k]) for k in ref)


def test_legacy_pickle_through_weights_dir_gives_exactly_the_state_dict_features(tmp_path, thnn):
    """The full DenseNet121 as a pre-1.6 non-zip module pickle under the published name, via --weights DIR."""
    import torchxrayvision as xrv

    from cxrbench.features.xrv import XRVDenseNetExtractor, _weights_url

    torch.manual_seed(5)
    ref = xrv.models.DenseNet(weights=None).eval()
    folder = tmp_path / "weights"
    folder.mkdir()
    save_module_pickle(ref, folder / os.path.basename(_weights_url()), legacy=True, edit_state=_thnn_and_no_buffers_set)
    sys.modules.pop("torch.nn.backends.thnn", None)
    torch.save(ref.state_dict(), tmp_path / "state.pt")
    x = synthetic_cxr(2, 224, seed=2)
    legacy = XRVDenseNetExtractor(weights=str(folder)).extract(x)
    assert torch.equal(legacy, XRVDenseNetExtractor(weights=str(tmp_path / "state.pt")).extract(x))
    assert torch.equal(legacy, XRVDenseNetExtractor(weights=str(folder)).extract(x))  # deterministic
    # what torchxrayvision's own loader does with the same file (unrestricted unpickling of our own file)
    sys.modules["torch.nn.backends.thnn"] = _thnn_backend_module()
    try:
        theirs = torch.load(folder / os.path.basename(_weights_url()), map_location="cpu", weights_only=False)
    finally:
        sys.modules.pop("torch.nn.backends.thnn", None)
    for m in theirs.modules():
        if not hasattr(m, "_non_persistent_buffers_set"):
            m._non_persistent_buffers_set = set()
    with torch.no_grad():
        torch.testing.assert_close(legacy, theirs.features2(x * 2048 - 1024), atol=1e-4, rtol=1e-4)


def test_a_module_pickle_missing_a_tensor_is_refused_naming_the_file(tmp_path):
    from cxrbench.features.xrv import load_xrv_weights

    def drop_classifier_bias(state):
        if "out_features" in state:  # the Linear head
            state["_parameters"] = {k: v for k, v in state["_parameters"].items() if k != "bias"}
        return state

    path = save_module_pickle(tiny_densenet(1), tmp_path / "short.pt", legacy=True, edit_state=drop_classifier_bias)
    with pytest.raises(WeightsError, match=r"short\.pt: this module does not fit .*classifier\.bias"):
        load_xrv_weights(tiny_densenet(2), path)


# --------------------------------------------------------------------------------------------------------
# Payloads: refused (or inert) and never run
# --------------------------------------------------------------------------------------------------------


def _payloads(marker):
    class System:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    class Exec:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').close()",))

    class Subprocess:
        def __reduce__(self):
            return (subprocess.check_call, (["touch", str(marker)],))

    class Partial:  # a gadget through an allowed-looking module: functools.partial(open, marker, "w")()
        def __reduce__(self):
            return (functools.partial(open, str(marker), "w"), ())

    return {"os.system": System, "builtins.exec": Exec, "subprocess": Subprocess, "functools.partial": Partial}


# GLOBAL posix.system + REDUCE, written by hand (protocol 0): what a hostile file would contain
def _hand_written(marker) -> bytes:
    return b"cposix\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-non-zip"])
@pytest.mark.parametrize("kind", ["os.system", "builtins.exec", "subprocess", "functools.partial"])
def test_payload_pickles_are_refused_with_no_side_effect(tmp_path, kind, legacy):
    from cxrbench.features.xrv import load_xrv_weights

    marker = tmp_path / "payload-ran"
    payload = _payloads(marker)[kind]
    net = tiny_densenet(1)
    net.evil = payload()  # hidden in a module attribute, where old pickles keep their baggage
    path = tmp_path / "evil.pt"
    torch.save(net, path, _use_new_zipfile_serialization=not legacy)
    flat = tmp_path / "evil-dict.pt"
    torch.save({"features.conv0.weight": payload()}, flat, _use_new_zipfile_serialization=not legacy)
    for p in (path, flat):
        with pytest.raises(WeightsError, match=p.name):
            load_xrv_weights(tiny_densenet(2), p)
    assert not marker.exists()
    # the payload is real: unrestricted unpickling of the same kind of object does run it
    pickle.loads(pickle.dumps(payload()))
    assert marker.exists()


def test_hand_written_global_reduce_payload_is_refused_in_every_container(tmp_path):
    from cxrbench.features.legacy_pickle import LEGACY_MAGIC, LEGACY_PROTOCOL
    from cxrbench.features.xrv import load_xrv_weights

    marker = tmp_path / "payload-ran"
    body = _hand_written(marker)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(body)
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(b"".join(pickle.dumps(x, protocol=2) for x in (LEGACY_MAGIC, LEGACY_PROTOCOL, {})) + body)
    zipped = tmp_path / "zipped.pt"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("archive/data.pkl", body)
    for p in (raw, legacy, zipped):
        with pytest.raises(WeightsError, match=rf"{p.name}: .*posix\.system"):
            load_xrv_weights(tiny_densenet(2), p)
    assert not marker.exists()


def test_unknown_callables_stay_inert_records(tmp_path, monkeypatch):
    """A global from a module not on the refuse list (here a fake one that would write the marker) is never
    called: it becomes a record, and the weights beside it still load."""
    from cxrbench.features.xrv import load_xrv_weights

    marker = tmp_path / "payload-ran"
    mod = types.ModuleType("thirdparty_hooks")

    def run(path):
        open(path, "w").close()

    run.__module__, run.__qualname__ = mod.__name__, "run"
    mod.run = run
    monkeypatch.setitem(sys.modules, mod.__name__, mod)

    class Hook:
        def __reduce__(self):
            return (run, (str(marker),))

    net = tiny_densenet(1)
    net.hook = Hook()
    torch.save(net, tmp_path / "hooked.pt")
    got = tiny_densenet(2)
    load_xrv_weights(got, tmp_path / "hooked.pt")
    assert not marker.exists()
    assert all(torch.equal(got.state_dict()[k], v) for k, v in net.state_dict().items())


def test_legacy_storage_views_match_torchs_own_legacy_loader(tmp_path):
    """PyTorch < 1.0 wrote storage *views* (view key, offset, size) into one root storage; hand-write such a
    file and read it with torch's unrestricted legacy loader as the reference."""
    from collections import OrderedDict

    from cxrbench.features.legacy_pickle import LEGACY_MAGIC, LEGACY_PROTOCOL, load_pickle

    root = torch.arange(12, dtype=torch.float32) * 1.5

    class View:
        def __init__(self, key, offset, size):
            self.pid = ("storage", torch.FloatStorage, "root", "cpu", 12, (key, offset, size))

    class Tensor:  # a tensor on a view, reduced as torch's own tensors are
        def __init__(self, view, offset, size, stride):
            self.args = (view, offset, size, stride, False, OrderedDict())

        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2, self.args)

    class LegacyPickler(pickle.Pickler):
        def persistent_id(self, obj):
            return obj.pid if isinstance(obj, View) else None

    a, b = View("v1", 2, 6), View("v2", 8, 4)
    obj = {"w": Tensor(a, 1, (2, 2), (1, 2)), "b": Tensor(b, 0, (4,), (1,)), "w2": Tensor(a, 0, (6,), (1,))}
    path = tmp_path / "views.pt"
    with open(path, "wb") as f:
        for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, f, protocol=2)
        LegacyPickler(f, protocol=2).dump(obj)
        pickle.dump(["root"], f, protocol=2)
        f.write((12).to_bytes(8, "little") + root.numpy().tobytes())
    ours, theirs = load_pickle(path), torch.load(path, weights_only=False)
    assert set(ours) == set(theirs) == {"w", "b", "w2"}
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k
    assert torch.equal(ours["w"], root[3:7].view(2, 2).T) and torch.equal(ours["b"], root[8:12])


def test_forged_storage_sizes_are_refused_without_allocating(tmp_path):
    from cxrbench.features.legacy_pickle import LegacyPickleError, load_pickle

    path = tmp_path / "small.pt"
    torch.save({"w": torch.ones(4)}, path, _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    # the storage's element count is pickled as BININT1 4 right after the location string 'cpu'
    i = raw.index(b"X\x03\x00\x00\x00cpuq")
    j = raw.index(b"K\x04", i)
    forged = raw[:j] + b"J" + (2**31 - 1).to_bytes(4, "little") + raw[j + 2 :]
    (tmp_path / "forged.pt").write_bytes(forged)
    assert torch.equal(load_pickle(path)["w"], torch.ones(4))
    with pytest.raises(LegacyPickleError, match="more than the file holds"):
        load_pickle(tmp_path / "forged.pt")


# --------------------------------------------------------------------------------------------------------
# Weights mirror on 127.0.0.1
# --------------------------------------------------------------------------------------------------------


@pytest.fixture
def mirror(tmp_path):
    """A static HTTP server on 127.0.0.1 serving tmp_path/mirror; yields (base url, folder, request paths)."""
    root = tmp_path / "mirror"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/weights/", root, requests
    finally:
        server.shutdown()
        server.server_close()


def test_mirror_fetches_by_published_name_checks_the_hash_and_comes_after_local_folders(
        mirror, tmp_path, monkeypatch, capsys):
    from cxrbench.features.weights import resolve_weights_file

    base, root, requests = mirror
    (root / "weights").mkdir()
    blob = os.urandom(3 << 20)
    (root / "weights" / "net-1234.pth").write_bytes(blob)
    digest = hashlib.sha256(blob).hexdigest()
    monkeypatch.setenv("CXRBENCH_WEIGHTS_MIRROR", base)
    monkeypatch.delenv("CXRBENCH_WEIGHTS", raising=False)
    cache = tmp_path / "cache"
    kw = dict(weights="auto", library_dirs=[cache], url="https://example.org/releases/net-1234.pth")
    got = resolve_weights_file("Net", ["net-1234.pth"], sha256=digest[:8], **kw)
    assert got == cache / "net-1234.pth" and got.read_bytes() == blob
    assert requests == ["/weights/net-1234.pth"] and sorted(os.listdir(cache)) == ["net-1234.pth"]
    out, err = capsys.readouterr()
    assert out == "" and "net-1234.pth" in err  # the progress bar goes to stderr
    # next time the library cache has it: the mirror is not asked again
    assert resolve_weights_file("Net", ["net-1234.pth"], sha256=digest, **kw) == got and len(requests) == 1


def test_mirror_copy_with_the_wrong_hash_is_refused_and_nothing_is_left(mirror, tmp_path, monkeypatch):
    from cxrbench.features.weights import resolve_weights_file

    base, root, requests = mirror
    (root / "weights").mkdir()
    (root / "weights" / "net-1234.pth").write_bytes(b"tampered" * 1000)
    monkeypatch.setenv("CXRBENCH_WEIGHTS_MIRROR", base)
    cache = tmp_path / "cache"
    with pytest.raises(WeightsError) as e:
        resolve_weights_file("Net", ["net-1234.pth"], weights="auto", library_dirs=[cache], sha256="6726825d",
                             url="https://example.org/net-1234.pth")
    msg = str(e.value)
    assert f"{base}net-1234.pth" in msg and "expected sha256 6726825d" in msg and len(msg.splitlines()) == 1
    assert list(cache.iterdir()) == []  # no temporary, no half file


def test_mirror_404_names_the_url_and_the_fix(mirror, tmp_path, monkeypatch):
    from cxrbench.features.weights import resolve_weights_file

    base, _, _ = mirror
    monkeypatch.setenv("CXRBENCH_WEIGHTS_MIRROR", base)
    with pytest.raises(WeightsError, match=rf"{base}net-1234.pth: HTTP 404 .*put the published net-1234.pth at"):
        resolve_weights_file("Net", ["net-1234.pth"], weights="auto", library_dirs=[tmp_path / "c"], sha256="00",
                             url="https://example.org/net-1234.pth")
    assert list((tmp_path / "c").iterdir()) == []


def test_mirror_download_goes_through_torch_hub_with_the_full_published_sha256(tmp_path, monkeypatch):
    """A file:// mirror (no network): the download is torch.hub's, checked against the whole published digest,
    so a copy that differs anywhere is refused and leaves nothing; the right copy lands with that digest."""
    from cxrbench.features.weights import resolve_weights_file

    served = tmp_path / "mirror"
    served.mkdir()
    blob = os.urandom(1 << 16)
    digest = hashlib.sha256(blob).hexdigest()
    calls = []
    real = torch.hub.download_url_to_file

    def spy(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        return real(url, dst, hash_prefix=hash_prefix, progress=progress)

    monkeypatch.setattr(torch.hub, "download_url_to_file", spy)
    monkeypatch.setenv("CXRBENCH_WEIGHTS_MIRROR", served.as_uri())
    monkeypatch.delenv("CXRBENCH_WEIGHTS", raising=False)
    cache = tmp_path / "cache"
    kw = dict(weights="auto", library_dirs=[cache], url="https://example.org/net-1234.pth", sha256=digest)

    (served / "net-1234.pth").write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))  # one bit off, at the very end
    with pytest.raises(WeightsError, match=f"expected sha256 {digest[:16]}"):
        resolve_weights_file("Net", ["net-1234.pth"], **kw)
    assert list(cache.iterdir()) == []
    (served / "net-1234.pth").write_bytes(blob)
    got = resolve_weights_file("Net", ["net-1234.pth"], **kw)
    assert got == cache / "net-1234.pth" and hashlib.sha256(got.read_bytes()).hexdigest() == digest
    assert calls == [(f"{served.as_uri()}/net-1234.pth", digest)] * 2


def test_xrv_through_the_mirror_requires_the_published_file(mirror, tmp_path, monkeypatch):
    """The extractor asks the mirror for torchxrayvision's published file name; a copy that is not the
    published file (here a self-made one) is refused with the expected hash named."""
    import torchxrayvision as xrv

    from cxrbench.features.xrv import PUBLISHED_SHA256, XRVDenseNetExtractor, _weights_url

    base, root, requests = mirror
    name = os.path.basename(_weights_url())
    (root / "weights").mkdir()
    torch.save(tiny_densenet(0).state_dict(), root / "weights" / name)
    monkeypatch.setenv("CXRBENCH_WEIGHTS_MIRROR", base)
    monkeypatch.delenv("CXRBENCH_WEIGHTS", raising=False)
    monkeypatch.setattr(xrv.utils, "get_cache_dir", lambda: str(tmp_path / "xrv-cache"))
    with pytest.raises(WeightsError, match=rf"{name}.*expected sha256 {PUBLISHED_SHA256[0][:16]}"):
        XRVDenseNetExtractor(weights="auto")
    assert requests == [f"/weights/{name}"] and list((tmp_path / "xrv-cache").iterdir()) == []


# --------------------------------------------------------------------------------------------------------
# The Inception pin, and comparable results
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_inception_dir(tmp_path_factory):
    from cxrbench.features.inception import FILENAMES, FIDInceptionV3

    folder = tmp_path_factory.mktemp("inception")
    torch.manual_seed(0)
    torch.save(FIDInceptionV3().state_dict(), folder / FILENAMES[1])  # the right format, other weights
    return folder


def test_an_inception_file_that_is_not_the_published_one_is_refused(own_inception_dir, monkeypatch, tmp_path):
    from cxrbench import cli
    from cxrbench.features.inception import InceptionV3Extractor

    monkeypatch.delenv("CXRBENCH_ALLOW_UNPUBLISHED_WEIGHTS", raising=False)
    with pytest.raises(WeightsError) as e:
        InceptionV3Extractor(weights=str(own_inception_dir))
    msg = str(e.value)
    assert "pt_inception-2015-12-05-6726825d.pth: sha256" in msg and "expected sha256 6726825d" in msg
    assert "CXRBENCH_ALLOW_UNPUBLISHED_WEIGHTS=1" in msg
    # the CLI: one line, non-zero exit
    from ..conftest import write_pngs

    imgs = write_pngs(tmp_path / "imgs", synthetic_cxr(4, 16, seed=0))
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = cli.main(["evaluate", "--samples", str(imgs), "--reference", str(imgs), "--extractors", "inception",
                       "--weights", str(own_inception_dir), "--no-cache", "--quiet"])
    assert rc == 1 and len(err.getvalue().strip().splitlines()) == 1 and "6726825d" in err.getvalue()
    # explicitly allowed: it loads, and says its weights are not the published ones
    monkeypatch.setenv("CXRBENCH_ALLOW_UNPUBLISHED_WEIGHTS", "1")
    ext = InceptionV3Extractor(weights=str(own_inception_dir))
    assert "is not the published file (sha256 6726825d" in ext.unpublished_weights()


def test_comparable_only_when_every_extractor_has_its_published_weights(tmp_path, monkeypatch, fast_config):
    """Each extractor class pins its own published sha256; the harness asks each one."""
    import dataclasses

    from cxrbench.engine.evaluate import evaluate
    from cxrbench.features.xrv import XRVDenseNetExtractor

    from ..conftest import write_pngs

    gen = write_pngs(tmp_path / "gen", synthetic_cxr(6, 16, 0.5, seed=1))
    ref = write_pngs(tmp_path / "ref", synthetic_cxr(6, 16, 0.0, seed=2))
    torch.manual_seed(0)
    import torchxrayvision as xrv

    torch.save(xrv.models.DenseNet(weights=None).state_dict(), tmp_path / "own.pt")
    cfg = dataclasses.replace(fast_config, extractors=("xrv", "pixels"), weights=str(tmp_path / "own.pt"),
                              n_bootstrap=2, metrics=("fid",))
    own = evaluate(gen, ref, config=cfg)
    sha = own["extractors"]["xrv"]["weights"]
    assert own["comparable"] is False and len(sha) == 64
    assert own["not_comparable_because"] == [f"xrv: weights sha256 {sha[:16]}... is not the published file "
                                             "(sha256 56524913dd16a906...)"]
    monkeypatch.setattr(XRVDenseNetExtractor, "published_sha256", (sha,))  # as if this were the published file
    pinned = evaluate(gen, ref, config=cfg)
    assert pinned["comparable"] is True and pinned["not_comparable_because"] == []
    assert pinned["metrics"] == own["metrics"]  # the pin changes the verdict, never a number


# --------------------------------------------------------------------------------------------------------
# Leaderboard: different extractor weights are never ranked together
# --------------------------------------------------------------------------------------------------------


def test_leaderboard_never_ranks_entries_with_different_extractor_weights_together(tmp_path):
    from cxrbench.publish.leaderboard import render
    from cxrbench.publish.ranking import group_entries

    from ..leaderboard_helpers import fake_entry
    from ..publish.test_leaderboard import Tables

    def entry(name, fid, weights):
        e = fake_entry(name, {"fid_x": (fid, False)})
        e["weights"] = {"random-conv": weights}
        e["result"]["extractors"]["random-conv"]["weights"] = weights
        return e

    es = [entry("A", 3.0, "a" * 64), entry("B", 1.0, "b" * 64), entry("C", 2.0, "a" * 64),
          fake_entry("R", {"fid_x": (0.1, False)}, comparable=False)]
    groups = group_entries(es)
    assert [sorted(e["slug"] for e in g.ranked) for g in groups] == [["a", "c"], ["b"]]
    assert [g.weights for g in groups] == [(("random-conv", "a" * 64),), (("random-conv", "b" * 64),)]
    assert [e["slug"] for e in groups[-1].unranked] == ["r"] and not groups[0].unranked
    render(es, tmp_path, entries_dir=tmp_path / "entries")
    t = Tables((tmp_path / "index.html").read_text()).tables
    ranked = {k: v["rows"] for k, v in t.items() if k.endswith("-ranked")}
    assert sorted(ranked.values()) == [["b"], ["c", "a"]]  # B (best FID) ranks only against its own weights
    assert t["default-v1-unranked"]["rows"] == ["r"]
    md = (tmp_path / "README.md").read_text()
    assert md.count("## Protocol `default` v1") == 1 and md.count("### Extractor weights:") == 2
    # same weights again: one table, as before
    assert len(group_entries([entry("A", 3.0, "a" * 64), entry("C", 2.0, "a" * 64)])) == 1
