"""Saving fitted estimators to one file that needs neither pickle nor torch.

A file (format version 3) is a zip archive whose members are stored
uncompressed:

- ``record.json``, a JSON document ``{"format": "skcrnn-model",
  "format_version": 3, "estimator": <class name>, "checksum": <SHA-256>,
  "content": <the payload>}``;
- ``arrays/<n>.npy``, one per array or tensor of the payload, in numpy's
  ``.npy`` format without pickled objects.

In the content, str, int, float (NaN and infinities as Python's json writes
them), bool, None, lists and dicts with str keys are themselves; any other
value is a JSON object of one key that starts with ``$``:

- ``{"$ndarray": member}``: a numpy array, read back as one;
- ``{"$tensor": member}``: a torch tensor, read back as a CPU tensor of the
  same dtype and shape (torch is imported only for files that hold one);
- ``{"$tuple": [items]}``;
- ``{"$dict": [[key, value], ...]}``: a dict with a key that is not a str
  (None, bool, int or float) or that starts with ``$``.

Reading it runs no code from the file: ``json`` and ``numpy.load`` without
pickle. Files of format versions 1 and 2 are ``torch.save`` zips of plain
values and tensors; they are still read, with ``torch.load(path,
weights_only=True)``.

The helpers here turn the package's fitted pieces into such values and back:

- label arrays (``classes_``, ``users_``) <-> ``{"dtype": ..., "values": [...]}``;
- :class:`~skcrnn._events.Sequences` <-> a dict of three int64 arrays;
- fitted arrays, sparse matrices and scalars <-> arrays, dicts of arrays
  and plain values (:func:`to_saved` / :func:`from_saved`, which checks
  shapes);
- :func:`write` / :func:`read` add and check a format stamp and a checksum of
  the content; :func:`write` replaces a file atomically.
"""

import hashlib
import json
import os
import pickle
import sys
import warnings
import zipfile
from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp

from ._events import Sequences
from ._files import check_writable, replacing

#: Tag written in every file of this package.
FORMAT = "skcrnn-model"
#: Version of the layout; :func:`read` refuses newer files. Version 2 added
#: the checksum (version 1 files, without one, are still read); version 3
#: replaced the ``torch.save`` file by a zip of JSON and ``.npy`` arrays.
FORMAT_VERSION = 3

#: The JSON document's name inside a file of format version 3 or later.
RECORD = "record.json"

_STAMP = ("format", "format_version", "estimator", "checksum")
_PLAIN_SCALARS = (str, bool, int, float)
#: Array kinds that a file holds: bool, signed and unsigned integers,
#: floats, complex numbers.
_ARRAY_KINDS = "biufc"
_ZIP_MAGIC = b"PK\x03\x04"
#: Time stamp of every member, so that a model gives the same bytes each time.
_MEMBER_TIME = (1980, 1, 1, 0, 0, 0)
#: Members at least this large get zip64 headers (zipfile needs to know
#: before writing a member whose size it cannot tell in advance).
_ZIP64_FROM = 1 << 30


# ------------------------------------------------------------------- labels
def labels_to_plain(labels):
    """A label array as plain Python values plus what rebuilds its dtype.

    Parameters
    ----------
    labels : ndarray
        Integers, floats, booleans or strings (object arrays of ``str``,
        ``int``, ``float`` and ``bool`` included).

    Returns
    -------
    dict
        ``{"dtype": numpy dtype string, "values": list}``.

    Raises
    ------
    ValueError
        For labels of other types (bytes, decimals, ...), which a file
        cannot hold without pickle.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind in "biuf":
        return {"dtype": labels.dtype.str, "values": labels.tolist()}
    if labels.dtype.kind == "U":
        return {"dtype": labels.dtype.str, "values": [str(v) for v in labels]}
    if labels.dtype.kind == "O":
        values = [v.item() if isinstance(v, np.generic) else v for v in labels]
        odd = [v for v in values if not isinstance(v, _PLAIN_SCALARS)]
        if odd:
            raise ValueError(
                f"Labels of type {type(odd[0]).__name__} (e.g. {odd[0]!r}) cannot be "
                f"saved; use labels that are strings or numbers, or pickle the "
                f"model instead.")
        return {"dtype": "|O", "values": values}
    raise ValueError(f"Labels of dtype {labels.dtype} cannot be saved.")


def labels_from_plain(plain):
    """Inverse of :func:`labels_to_plain`."""
    dtype = np.dtype(plain["dtype"])
    if dtype.kind == "O":
        array = np.empty(len(plain["values"]), dtype=object)
        array[:] = plain["values"]
        return array
    return np.asarray(plain["values"], dtype=dtype).reshape(-1)


# ---------------------------------------------------------------- sequences
def sequences_to_tensors(sequences):
    """A :class:`Sequences` as a dict of three int64 arrays.

    (Files of format versions 1 and 2 hold int64 tensors instead.)
    """
    return {name: np.asarray(getattr(sequences, name), dtype=np.int64)
            for name in ("user_codes", "indptr", "items")}


def sequences_from_tensors(tensors):
    """Inverse of :func:`sequences_to_tensors`; takes arrays or tensors."""
    return Sequences(**{name: np.asarray(_to_array(tensors[name], name), dtype=np.int64)
                        for name in ("user_codes", "indptr", "items")})


def check_history(sequences, n_users, n_items):
    """Check that fitted histories fit vocabularies of these sizes.

    Parameters
    ----------
    sequences : Sequences
        Histories read from a file.
    n_users, n_items : int
        Sizes of the vocabularies read with them.

    Raises
    ------
    ValueError
        If ``sequences`` is not one group per user ``0 .. n_users - 1`` in
        order, with a valid ``indptr`` and item codes below ``n_items``.
    """
    indptr, items = sequences.indptr, sequences.items
    if not (np.array_equal(sequences.user_codes, np.arange(n_users))
            and indptr.shape == (n_users + 1,) and indptr[0] == 0
            and indptr[-1] == len(items) and (np.diff(indptr) >= 0).all()
            and ((items >= 0) & (items < n_items)).all()):
        raise ValueError(f"the fitted histories do not match the {n_users} users "
                         f"and {n_items} items of the vocabularies")


# ------------------------------------------------------------ fitted state
def to_saved(value):
    """A fitted attribute as a value that a file holds.

    Parameters
    ----------
    value : ndarray, scipy sparse matrix, or scalar
        A numeric array, a sparse matrix, or an int, float, bool, str or
        None (numpy scalars included).

    Returns
    -------
    ndarray, dict or scalar
        An array as itself (a plain ndarray); a sparse matrix as
        ``{"csr_shape": [rows, cols], "data", "indices", "indptr"}`` (its CSR
        arrays); a numpy scalar as the Python scalar.

    Raises
    ------
    ValueError
        For anything else (object and string arrays included).
    """
    if sp.issparse(value):
        matrix = sp.csr_matrix(value)
        return {"csr_shape": list(matrix.shape),
                **{name: to_saved(getattr(matrix, name))
                   for name in ("data", "indices", "indptr")}}
    if isinstance(value, np.ndarray):
        return _checked_array(np.asarray(value))
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, _PLAIN_SCALARS):
        return value
    raise ValueError(f"A {type(value).__name__} cannot be saved.")


def from_saved(saved, spec, sizes, name):
    """Inverse of :func:`to_saved`, checked against what is expected.

    Parameters
    ----------
    saved : ndarray, torch.Tensor, dict or scalar
        A value of :func:`to_saved` (arrays are tensors in files of format
        versions 1 and 2).
    spec : tuple of str or type
        For an array or sparse matrix, the names of its dimensions; for a
        scalar, its type (``float`` also takes NaN).
    sizes : dict
        Known size of each dimension name. Names not in it are learned from
        the first array that has them (``sizes`` is updated), so that arrays
        sharing a name must agree.
    name : str
        What the value is, for the error message.

    Returns
    -------
    ndarray, scipy.sparse.csr_matrix or scalar
        The value (an array read from a tensor shares its memory).

    Raises
    ------
    ValueError
        If the value is not of the expected kind or shape.
    """
    if isinstance(spec, type):
        if type(saved) is not spec:
            raise ValueError(f"{name} is of type {type(saved).__name__}, expected "
                             f"{spec.__name__}")
        return saved
    if isinstance(saved, dict):
        shape = tuple(saved["csr_shape"])
        _check_shape(name, shape, spec, sizes)
        value = sp.csr_matrix(tuple(_to_array(saved[part], part) for part in
                                    ("data", "indices", "indptr")), shape=shape)
        value.check_format(full_check=True)
        return value
    value = _to_array(saved, name)
    _check_shape(name, value.shape, spec, sizes)
    return value


def _to_array(saved, name):
    if isinstance(saved, np.ndarray):
        return saved
    if _is_tensor(saved):
        return saved.detach().cpu().numpy()
    raise ValueError(f"{name} is of type {type(saved).__name__}, expected "
                     f"a tensor or an array")


def _checked_array(array):
    if array.dtype.kind not in _ARRAY_KINDS:
        raise ValueError(f"An array of dtype {array.dtype} cannot be saved.")
    return array


def _is_tensor(value):
    """Whether ``value`` is a torch tensor, without importing torch (if it is
    not imported, no tensor exists)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _check_shape(name, shape, spec, sizes):
    shape = tuple(shape)
    if len(shape) == len(spec):
        for dim, size in zip(spec, shape):
            sizes.setdefault(dim, size)
        if shape == tuple(sizes[dim] for dim in spec):
            return
    raise ValueError(f"{name} has shape {shape}; expected ({', '.join(spec)}) "
                     f"with {sizes}")


# ------------------------------------------------------------------- params
def plain_params(params):
    """Estimator parameters as a JSON-able dict.

    A ``random_state`` that is a generator object becomes ``None`` (its state
    is not saved), a path object its string. Other values that JSON cannot
    hold raise ``ValueError``.
    """
    plain = {}
    for name, value in params.items():
        if name == "random_state" and not (value is None
                                           or isinstance(value, Integral)):
            value = None
        elif isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, os.PathLike):
            value = os.fspath(value)
        if isinstance(value, Integral) and not isinstance(value, bool):
            value = int(value)
        elif isinstance(value, Real) and not isinstance(value, bool):
            value = float(value)
        try:
            json.dumps(value)
        except TypeError:
            raise ValueError(f"Parameter {name}={value!r} cannot be saved.") from None
        plain[name] = value
    return plain


# ------------------------------------------------------------------- write
def write(path, estimator_name, payload):
    """Write ``payload`` with a format stamp and a checksum.

    Parameters
    ----------
    path : str, path-like or binary file
        Where to write. A path is replaced atomically: the file is written
        next to it, flushed to disk and renamed onto it, so that a reader,
        or a crash at any moment, finds the old file or the new one, never a
        part. A file opened for writing is written into as it is.
    estimator_name : str
        Stamped in the file; :func:`read` checks it.
    payload : dict
        Plain values, numpy arrays and torch tensors, in dicts, lists and
        tuples (see the module's docstring). Tensors are saved from the CPU.

    Raises
    ------
    ValueError
        If ``payload`` holds a value that a file cannot hold, or an entry of
        the stamp (``format``, ``format_version``, ``estimator``,
        ``checksum``); nothing is written then.
    OSError
        If ``path`` cannot be written (a directory, a missing or read-only
        directory...), raised before any work; the error names ``path``.
    """
    if hasattr(path, "write"):
        _write_archive(path, *_document(estimator_name, payload))
        return
    check_writable(path)
    document, arrays = _document(estimator_name, payload)
    with replacing(path) as handle:
        _write_archive(handle, document, arrays)


def _document(estimator_name, payload):
    """The JSON document of a file, and the arrays that it names."""
    reserved = sorted(set(payload) & set(_STAMP))
    if reserved:
        raise ValueError(f"The entries {reserved} are reserved for the stamp.")
    content = _canonical(payload)
    stamp = {"format": FORMAT, "format_version": FORMAT_VERSION,
             "estimator": estimator_name}
    arrays = []
    document = {**stamp, "checksum": checksum({**stamp, **content}),
                "content": _encode(content, arrays)}
    return document, arrays


def _canonical(value):
    """``value`` as :func:`read` will return it (numpy scalars as Python
    scalars, tensors on the CPU), or ``ValueError`` if a file cannot hold
    it."""
    if isinstance(value, dict):
        return {_canonical_key(key): _canonical(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_canonical(item) for item in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, np.ndarray):
        return _checked_array(np.asarray(value))
    if _is_tensor(value):
        return _canonical_tensor(value)
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool):
        return value
    for kind in (int, float, str):
        if isinstance(value, kind):
            return kind(value)
    raise ValueError(f"A value of type {type(value).__name__} cannot be saved.")


def _canonical_key(key):
    if isinstance(key, np.generic):
        key = key.item()
    if key is None or isinstance(key, _PLAIN_SCALARS):
        return _canonical(key)
    raise ValueError(f"A key of type {type(key).__name__} cannot be saved.")


def _canonical_tensor(tensor):
    torch = sys.modules["torch"]
    if tensor.layout != torch.strided:
        raise ValueError(f"A tensor of layout {tensor.layout} cannot be saved.")
    tensor = tensor.detach().cpu().resolve_conj().resolve_neg().contiguous()
    try:
        tensor.numpy()
    except (TypeError, RuntimeError):
        raise ValueError(f"A tensor of dtype {tensor.dtype} cannot be "
                         f"saved.") from None
    return tensor


def _encode(value, arrays):
    """A canonical value as JSON-able values; its arrays (and tensors, as
    arrays) are appended to ``arrays`` as ``(member name, array)``."""
    if isinstance(value, dict):
        if all(isinstance(key, str) and not key.startswith("$") for key in value):
            return {key: _encode(item, arrays) for key, item in value.items()}
        return {"$dict": [[key, _encode(item, arrays)] for key, item in value.items()]}
    if isinstance(value, list):
        return [_encode(item, arrays) for item in value]
    if isinstance(value, tuple):
        return {"$tuple": [_encode(item, arrays) for item in value]}
    if isinstance(value, np.ndarray):
        return {"$ndarray": _add_array(arrays, value)}
    if _is_tensor(value):
        return {"$tensor": _add_array(arrays, value.numpy())}
    return value


def _add_array(arrays, array):
    name = f"arrays/{len(arrays)}.npy"
    arrays.append((name, array))
    return name


def _write_archive(file, document, arrays):
    with zipfile.ZipFile(file, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(_member(RECORD), json.dumps(document, separators=(",", ":")))
        for name, array in arrays:
            with archive.open(_member(name), "w",
                              force_zip64=array.nbytes >= _ZIP64_FROM) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def _member(name):
    info = zipfile.ZipInfo(name, date_time=_MEMBER_TIME)
    info.external_attr = 0o644 << 16
    return info


# -------------------------------------------------------------------- read
def read(path, estimator_name, map_location="cpu"):
    """Read a file of :func:`write`, checking that it holds ``estimator_name``.

    Parameters
    ----------
    path : str or path-like
    estimator_name : str
    map_location : str, torch.device or None
        Where to put the tensors of the file (None: the CPU). Numpy arrays
        stay arrays. Files of format versions 1 and 2 pass it to
        ``torch.load``.

    Returns
    -------
    dict
        The stamp (``format``, ``format_version``, ``estimator``), the
        payload's entries, and ``checksum``.

    Raises
    ------
    ValueError
        If the file is not one of this package's model files, is damaged or
        truncated, was written by a newer version, or holds another
        estimator.
    FileNotFoundError, PermissionError, IsADirectoryError
        If ``path`` cannot be opened, as with :func:`open`.
    """
    with open(path, "rb") as file:
        if file.read(len(_ZIP_MAGIC)) != _ZIP_MAGIC:
            raise ValueError(f"{path!s} is not a skcrnn model file (or it is "
                             f"damaged): it is not a zip archive.")
        file.seek(0)
        archive = _open_zip(path, file)
        with archive:
            record = _read_archive(path, archive) if _has_record(path, archive) \
                else None
    if record is None:  # a torch zip: format version 1 or 2
        record = _read_torch_file(path, map_location)
    else:
        record = _to_location(record, map_location)
    if record.get("estimator") != estimator_name:
        raise ValueError(f"{path!s} holds a {record.get('estimator')!r}, not a "
                         f"{estimator_name!r}.")
    return record


def _open_zip(path, file):
    try:
        return zipfile.ZipFile(file)
    except Exception as error:  # noqa: BLE001 -- damage surfaces as many types
        raise _damaged(path, error, "is damaged or truncated") from error


def _has_record(path, archive):
    """Whether ``archive`` is of format version 3 or later; False for a
    torch zip."""
    names = archive.namelist()
    if RECORD in names:
        return True
    if any(name.endswith("/data.pkl") for name in names):
        return False
    raise ValueError(f"{path!s} is not a skcrnn model file: it is a zip archive "
                     f"without {RECORD!r}.")


def _read_archive(path, archive):
    """The record of a file of format version 3, its tensors on the CPU."""
    try:
        document = json.loads(archive.read(RECORD))
    except Exception as error:  # noqa: BLE001 -- damage surfaces as many types
        raise _read_error(path, error, "is damaged or truncated") from error
    _check_stamp(path, document, range(3, FORMAT_VERSION + 1),
                 "a zip of JSON and arrays")
    try:
        content = _decode(document["content"], archive)
        if not isinstance(content, dict) or set(content) & set(_STAMP):
            raise ValueError("its content is not a dict of entries")
    except Exception as error:  # noqa: BLE001
        raise _read_error(path, error, "is damaged") from error
    record = {key: document[key] for key in _STAMP[:3]}
    record.update(content)
    record["checksum"] = document.get("checksum")
    if not _checksum_matches(record):
        raise _mismatch(path)
    return record


def _decode(value, archive):
    """Inverse of :func:`_encode`, reading the arrays from ``archive``."""
    if isinstance(value, list):
        return [_decode(item, archive) for item in value]
    if not isinstance(value, dict):
        return value
    tags = [key for key in value if key.startswith("$")]
    if not tags:
        return {key: _decode(item, archive) for key, item in value.items()}
    if len(value) != 1 or tags[0] not in _DECODERS:
        raise ValueError(f"it holds an unknown entry {tags[0]!r}")
    return _DECODERS[tags[0]](value[tags[0]], archive)


def _decode_tuple(items, archive):
    if not isinstance(items, list):
        raise ValueError("a tuple is not a list")
    return tuple(_decode(item, archive) for item in items)


def _decode_dict(pairs, archive):
    if not (isinstance(pairs, list) and all(
            isinstance(pair, list) and len(pair) == 2 for pair in pairs)):
        raise ValueError("a dict is not a list of pairs")
    return {key: _decode(item, archive) for key, item in pairs}


def _read_array(name, archive):
    with archive.open(name) as member:
        array = np.lib.format.read_array(member, allow_pickle=False)
        if member.read(1):
            raise ValueError(f"{name} has bytes after its array")
    return array


def _read_tensor(name, archive):
    import torch  # only for files that hold tensors
    return torch.from_numpy(_read_array(name, archive))


_DECODERS = {"$tuple": _decode_tuple, "$dict": _decode_dict,
             "$ndarray": _read_array, "$tensor": _read_tensor}


def _to_location(value, map_location):
    """``value`` with its tensors moved to ``map_location``."""
    if map_location is None or "torch" not in sys.modules:
        return value
    if isinstance(value, dict):
        return {key: _to_location(item, map_location) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_location(item, map_location) for item in value)
    return value.to(map_location) if _is_tensor(value) else value


def _read_torch_file(path, map_location):
    """The record of a file of format version 1 or 2 (a ``torch.save`` zip)."""
    import torch  # only for the files of earlier versions
    try:
        with warnings.catch_warnings():
            # a foreign pickle makes torch warn about its protocol before failing
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            record = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 -- damage surfaces as many types
        if isinstance(error, pickle.UnpicklingError):  # needs more than weights_only
            raise _damaged(path, error, "is not a skcrnn model file (or it is "
                                        "damaged): torch cannot read it") from error
        raise _damaged(path, error, "is damaged or truncated (or is not a torch "
                                    "file): torch cannot read it") from error
    _check_stamp(path, record, (1, 2), "a torch file")
    if record["format_version"] >= 2 and not _checksum_matches(record):
        raise _mismatch(path)
    return record


def _check_stamp(path, record, versions, layout):
    """Check the format stamp and version of a record of ``layout``, whose
    versions are ``versions``."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{path!s} is not a skcrnn model file: it has no "
                         f"{FORMAT!r} stamp.")
    version = record.get("format_version")
    if type(version) is not int:
        raise ValueError(f"{path!s} is damaged: its format version is "
                         f"{version!r}, not a number.")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path!s} has format version {version!r}; this version of skcrnn "
            f"reads versions up to {FORMAT_VERSION}. Upgrade skcrnn.")
    if version not in versions:
        raise ValueError(f"{path!s} is damaged: its format version is {version}, "
                         f"but it is {layout}.")


def _read_error(path, error, problem):
    """The ``ValueError`` for ``error`` raised while reading a zip's member."""
    if isinstance(error, zipfile.BadZipFile) and "CRC" in str(error):
        return _mismatch(path, error)  # a changed byte in a member
    return _damaged(path, error, problem)


def _damaged(path, error, problem):
    first_line = str(error).splitlines()[0] if str(error) else ""
    return ValueError(f"{path!s} {problem}: {type(error).__name__}: {first_line}")


def _mismatch(path, error=None):
    detail = f" ({error})" if error is not None else ""
    return ValueError(f"{path!s} is damaged: its content does not match its "
                      f"checksum{detail}.")


# ---------------------------------------------------------------- checksum
def checksum(record):
    """SHA-256 hex digest of a record's content, its ``"checksum"`` aside.

    Parameters
    ----------
    record : dict
        Nested dicts, lists and tuples of arrays, tensors and plain values,
        as :func:`read` returns them (dicts keep their order).

    Returns
    -------
    str
        64 hexadecimal digits.
    """
    hasher = hashlib.sha256()
    _feed(hasher, {key: value for key, value in record.items() if key != "checksum"})
    return hasher.hexdigest()


def _checksum_matches(record):
    try:
        return record.get("checksum") == checksum(record)
    except (RuntimeError, TypeError, ValueError):  # e.g. a sparse tensor
        return False


def _feed(hasher, value):
    """Add ``value`` to ``hasher`` with type tags, so that no two values of
    different structure feed the same bytes."""
    if _is_tensor(value):  # as format version 2 did, so that its files check
        torch = sys.modules["torch"]
        tensor = value.detach().cpu().resolve_conj().resolve_neg().contiguous()
        hasher.update(f"tensor {tensor.dtype} {tuple(tensor.shape)}:".encode())
        hasher.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, np.ndarray):
        hasher.update(f"ndarray {value.dtype.str} {value.shape}:".encode())
        hasher.update(np.ascontiguousarray(value).reshape(-1).view(np.uint8))
    elif isinstance(value, dict):
        hasher.update(f"dict {len(value)}:".encode())
        for key, item in value.items():
            _feed(hasher, key)
            _feed(hasher, item)
    elif isinstance(value, (list, tuple)):
        hasher.update(f"{type(value).__name__} {len(value)}:".encode())
        for item in value:
            _feed(hasher, item)
    elif value is None or isinstance(value, bool):
        hasher.update(f"{value!r};".encode())
    elif isinstance(value, (int, float, str)):
        # the base type: a numpy scalar written comes back as a Python one
        kind = next(t for t in (int, float, str) if isinstance(value, t))
        hasher.update(f"{kind.__name__} {kind.__repr__(value)};".encode())
    else:  # what else weights_only loads (torch.dtype, ...) has a stable repr
        hasher.update(f"{type(value).__qualname__} {value!r};".encode())
