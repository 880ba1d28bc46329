"""Read the tensors out of any historical PyTorch module pickle without executing code from it.

Published weights are often whole modules pickled by an old PyTorch (torchxrayvision's DenseNets predate
PyTorch 1.6). ``torch.load(weights_only=True)`` refuses the globals such files name (module classes,
``torch.nn.backends.thnn._get_thnn_function_backend``), and ``weights_only=False`` would run whatever the
file says. This unpickler rebuilds only tensors (``torch._utils._rebuild_tensor[_v2]``,
``_rebuild_parameter``, the storage types), ``collections.OrderedDict`` and ``set``; every other global
becomes an inert *record* class whose instances just hold the arguments and state the pickle gave them.
A record has no behaviour, so a ``REDUCE`` of one never runs anything; globals of modules that only a
payload would name (``os``, ``subprocess``, ``builtins.exec`` ...) are refused outright.

Both container formats are read: the zip archive (``data.pkl`` + ``data/<key>``, PyTorch >= 1.6) and the
legacy stream (magic number, protocol, sys_info, the pickle, the storage keys, then each storage's
element count and raw bytes). ``state_dict_from_file`` walks the records' ``_parameters``, ``_buffers`` and
``_modules`` the way ``nn.Module.state_dict()`` names keys.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL = 1001

# Storage class name -> dtype (torch.FloatStorage, torch.cuda.FloatStorage, ...; UntypedStorage holds bytes).
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
    "UntypedStorage": torch.uint8,
}
# Modules a weights file has no reason to name: a global from one of these is refused, not recorded.
# (Records are inert anyway; refusing these gives a clear message for the classic payloads.)
_REFUSED_MODULES = {
    "os", "posix", "nt", "subprocess", "_posixsubprocess", "commands", "popen2", "sys", "builtins",
    "__builtin__", "shutil", "importlib", "runpy", "socket", "pickle", "_pickle", "marshal", "ctypes", "pty",
    "code", "codeop", "webbrowser", "multiprocessing", "signal",
}


class LegacyPickleError(Exception):
    """The file is not a readable weights pickle (or names something only a payload would)."""


class Record:
    """An instance of a class the file names, reduced to what the pickle gave it; it has no behaviour."""

    _global: str = "?"

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "state", None)
        object.__setattr__(self, "items", [])
        return self

    def __init__(self, *args, **kwargs) -> None:  # REDUCE calls the class: __new__ already kept the args
        pass

    def __setstate__(self, state) -> None:  # BUILD
        object.__setattr__(self, "state", state)

    # SETITEM(S) / APPEND(S) on a record (a dict or list subclass in the original): kept, never interpreted
    def __setitem__(self, key, value) -> None:
        self.items.append((key, value))

    def append(self, value) -> None:
        self.items.append(value)

    def extend(self, values) -> None:
        self.items.extend(values)

    def __setattr__(self, name, value) -> None:
        raise AttributeError("records are read-only")

    def __repr__(self) -> str:
        return f"<record of {self._global}>"

    def attributes(self) -> dict:
        """The instance ``__dict__`` the pickle carried (``BUILD`` state, or its dict half with slots)."""
        s = self.state
        if isinstance(s, tuple) and len(s) == 2 and isinstance(s[0], (dict, type(None))):
            s = s[0]
        return s if isinstance(s, dict) else {}


class _Storage:
    """A storage the pickle refers to: ``numel`` elements from ``offset`` of a flat tensor (a legacy view
    shares its root's), filled now (zip) or after the pickle (legacy)."""

    def __init__(self, flat: torch.Tensor, offset: int = 0, numel: int | None = None) -> None:
        self.flat, self.offset = flat, offset
        self.numel = flat.numel() - offset if numel is None else numel


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name, self.dtype = name, _STORAGE_DTYPES[name]


def _ints(x, what: str) -> tuple[int, ...]:
    if not isinstance(x, (tuple, list)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in x):
        raise LegacyPickleError(f"tensor {what} is not a tuple of ints ({type(x).__name__})")
    return tuple(x)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """torch._utils._rebuild_tensor / _v2: a strided view of ``storage`` (bounds checked by as_strided)."""
    if not isinstance(storage, _Storage):
        raise LegacyPickleError(f"tensor built on {type(storage).__name__}, not a storage")
    if not isinstance(storage_offset, int):
        raise LegacyPickleError("tensor storage offset is not an int")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride) or min(size + stride + (storage_offset,), default=0) < 0:
        raise LegacyPickleError(f"tensor size {size} / stride {stride} / offset {storage_offset} is invalid")
    extent = storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else 0
    if extent > storage.numel:
        raise LegacyPickleError(f"tensor of size {size} reaches past its storage ({storage.numel} elements)")
    # as_strided's offset counts from the start of the flat tensor's memory, so a view adds its own offset
    return torch.as_strided(storage.flat, size, stride, storage.offset + storage_offset)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *_state):
    if not isinstance(data, torch.Tensor):
        raise LegacyPickleError(f"parameter built on {type(data).__name__}, not a tensor")
    return data


def _codecs_encode(text, encoding="latin1"):
    # how protocol-2 pickles spell a bytes object; anything else is not a bytes literal
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise LegacyPickleError("_codecs.encode used for something other than a bytes literal")
    return text.encode("latin1")


def _reconstructor(cls, base=object, state=None):
    """copyreg._reconstructor (protocol 0/1 pickles of plain classes): only ever makes a record."""
    if not (isinstance(cls, type) and issubclass(cls, Record)):
        raise LegacyPickleError(f"copyreg._reconstructor of {cls!r}")
    return cls()


def _set(items=()):
    if isinstance(items, Record):
        raise LegacyPickleError("set() of a record")
    return set(items)


def _frozenset(items=()):
    return frozenset(_set(items))


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.nn.parameter", "Parameter"): _rebuild_parameter,  # PyTorch < 0.4 reduced Parameter(data, grad)
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): _set, ("__builtin__", "set"): _set,
    ("builtins", "frozenset"): _frozenset, ("__builtin__", "frozenset"): _frozenset,
    ("_codecs", "encode"): _codecs_encode,
    ("copyreg", "_reconstructor"): _reconstructor, ("copy_reg", "_reconstructor"): _reconstructor,
    ("builtins", "object"): object, ("__builtin__", "object"): object,  # _reconstructor's base argument
}


class RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds tensors and plain containers; every other global is an inert ``Record`` subclass."""

    def __init__(self, file, *, storage_loader) -> None:
        super().__init__(file, encoding="latin1")  # python-2-era pickles carry str objects as bytes
        self._storage_loader = storage_loader
        self._records: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module in ("torch", "torch.cuda") and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module.split(".")[0] in _REFUSED_MODULES:
            raise LegacyPickleError(f"names {module}.{name}, which a weights file never needs (refused)")
        if (module, name) not in self._records:
            self._records[(module, name)] = type(name, (Record,), {"_global": f"{module}.{name}",
                                                                    "__module__": "cxrbench.legacy_record"})
        return self._records[(module, name)]

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid:
            raise LegacyPickleError(f"unknown persistent id {type(pid).__name__}")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module" and len(pid) >= 2:  # legacy format: a module class and its source, for warnings
            return pid[1]
        if kind == "storage" and len(pid) >= 5:
            return self._storage_loader(*pid[1:])
        raise LegacyPickleError(f"unknown persistent id {kind!r}")


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _load_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise LegacyPickleError("zip archive without a single <name>/data.pkl (not a torch.save file)")
        prefix = pkl[0][: -len("data.pkl")]
        if f"{prefix}byteorder" in names and z.read(f"{prefix}byteorder").strip() not in (b"little", b""):
            raise LegacyPickleError("big-endian torch.save archive; re-save it on a little-endian machine")
        storages: dict[str, _Storage] = {}

        def storage(storage_type, key, location, numel, *_view):
            if not isinstance(storage_type, _StorageType):
                raise LegacyPickleError(f"storage of type {storage_type!r}")
            key = str(key)
            if key not in storages:
                try:
                    raw = z.read(f"{prefix}data/{key}")
                except KeyError:
                    raise LegacyPickleError(f"storage {key} is missing from the archive") from None
                dtype = storage_type.dtype
                n = len(raw) // _element_size(dtype)
                if not isinstance(numel, int) or n < numel:
                    raise LegacyPickleError(f"storage {key} holds {n} elements, the pickle expects {numel}")
                raw = bytearray(raw[: n * _element_size(dtype)])
                storages[key] = _Storage(torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype))
            return storages[key]

        with z.open(pkl[0]) as f:
            return RestrictedUnpickler(io.BytesIO(f.read()), storage_loader=storage).load()


def _load_legacy(path: Path) -> Any:
    size = path.stat().st_size
    with open(path, "rb") as f:

        def plain(what):
            return RestrictedUnpickler(f, storage_loader=_no_storage(what)).load()

        if plain("magic number") != LEGACY_MAGIC:
            raise LegacyPickleError("neither a zip archive nor a legacy torch.save file (wrong magic number)")
        if plain("protocol") != LEGACY_PROTOCOL:
            raise LegacyPickleError("legacy torch.save file of an unknown protocol version")
        info = plain("sys_info")
        if isinstance(info, dict) and info.get("little_endian") is False:
            raise LegacyPickleError("big-endian legacy torch.save file; re-save it on a little-endian machine")
        roots: dict[str, _Storage] = {}
        views: dict[str, _Storage] = {}

        def storage(storage_type, root_key, location, numel, view_metadata=None):
            if not isinstance(storage_type, _StorageType) or not isinstance(numel, int) or numel < 0:
                raise LegacyPickleError(f"storage {root_key!r} of type {storage_type!r}, {numel!r} elements")
            if numel * _element_size(storage_type.dtype) > size:  # a forged count must not allocate the world
                raise LegacyPickleError(f"storage {root_key!r} claims {numel} elements, more than the file holds")
            root_key = str(root_key)
            if root_key not in roots:
                roots[root_key] = _Storage(torch.zeros(numel, dtype=storage_type.dtype))
            root = roots[root_key]
            if view_metadata is None:
                return root
            view_key, offset, view_size = view_metadata
            if str(view_key) not in views:
                if not (isinstance(offset, int) and isinstance(view_size, int) and 0 <= offset
                        and 0 <= view_size and offset + view_size <= root.numel):
                    raise LegacyPickleError(f"storage view {view_key!r} lies outside its storage")
                views[str(view_key)] = _Storage(root.flat, offset, view_size)
            return views[str(view_key)]

        obj = RestrictedUnpickler(f, storage_loader=storage).load()
        keys = plain("storage keys")
        if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(roots):
            raise LegacyPickleError("storage key list does not match the storages the pickle uses")
        for key in map(str, keys):  # each: int64 element count, then the raw little-endian elements
            flat = roots[key].flat
            head = f.read(8)
            if len(head) != 8 or int.from_bytes(head, "little") != flat.numel():
                raise LegacyPickleError(f"storage {key}: element count does not match the pickle (truncated?)")
            nbytes = flat.numel() * flat.element_size()
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise LegacyPickleError(f"storage {key}: file ends early (truncated download?)")
            if nbytes:
                flat.copy_(torch.frombuffer(bytearray(raw), dtype=flat.dtype))
    return obj


def _no_storage(what):
    def refuse(*_):
        raise LegacyPickleError(f"the {what} header refers to a storage")

    return refuse


def load_pickle(path: str | os.PathLike) -> Any:
    """The object a ``torch.save`` file holds, with tensors rebuilt and every other class an inert ``Record``."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    return _load_legacy(path)


def module_state_dict(root: Record, *, max_depth: int = 64) -> OrderedDict[str, torch.Tensor]:
    """The ``state_dict()`` of a recorded module: ``_parameters`` and persistent ``_buffers``, prefixed by
    the ``_modules`` path; attributes the current classes lack are never looked at."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    seen: set[int] = set()

    def walk(rec, prefix: str, depth: int) -> None:
        if id(rec) in seen:
            return  # a shared submodule appears once, as in state_dict()
        if depth > max_depth:
            raise LegacyPickleError(f"module tree deeper than {max_depth} at {prefix!r}")
        seen.add(id(rec))
        attrs = rec.attributes()
        non_persistent = attrs.get("_non_persistent_buffers_set") or set()  # absent before PyTorch 1.6
        for group in ("_parameters", "_buffers"):
            for name, t in (attrs.get(group) or {}).items():
                if t is None or (group == "_buffers" and name in non_persistent):
                    continue
                if not isinstance(t, torch.Tensor):
                    raise LegacyPickleError(f"{prefix}{name} is a {type(t).__name__}, not a tensor")
                out[prefix + str(name)] = t
        for name, child in (attrs.get("_modules") or {}).items():
            if child is None:
                continue
            if not isinstance(child, Record):
                raise LegacyPickleError(f"submodule {prefix}{name} is a {type(child).__name__}")
            walk(child, f"{prefix}{name}.", depth + 1)

    walk(root, "", 0)
    return out


def is_module_record(obj: Any) -> bool:
    return isinstance(obj, Record) and "_modules" in obj.attributes()


def state_dict_from_file(path: str | os.PathLike) -> tuple[OrderedDict[str, torch.Tensor], str]:
    """(state dict, "module" | "state dict") from a pickled module or a saved state dict, any format.

    Raises ``LegacyPickleError`` for anything else (including pickles that name a refused global).
    """
    try:
        obj = load_pickle(path)
    except LegacyPickleError:
        raise
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, TypeError, KeyError,
            AttributeError, IndexError, RuntimeError, RecursionError, OverflowError, MemoryError, OSError) as e:
        first = (str(e).splitlines() or [""])[0][:200]  # messages end up on one line of the CLI's stderr
        raise LegacyPickleError(f"{type(e).__name__}: {first}") from None
    if is_module_record(obj):
        state, kind = module_state_dict(obj), "module"
    elif isinstance(obj, dict) and obj and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        state, kind = OrderedDict(obj), "state dict"
    else:
        what = obj._global if isinstance(obj, Record) else type(obj).__name__
        raise LegacyPickleError(f"holds a {what}, neither a pickled module nor a state dict of tensors")
    # fresh plain tensors: nothing a BUILD opcode may have attached (hooks, shared views) comes along
    return OrderedDict((k, v.detach().clone()) for k, v in state.items()), kind
