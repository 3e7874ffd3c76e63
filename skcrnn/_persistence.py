"""Saving fitted estimators to one ``torch.save`` file that needs no pickle.

A file is a dict of plain Python values and tensors only, so that
``torch.load(path, weights_only=True)`` reads it. The helpers here turn the
package's fitted pieces into such values and back:

- label arrays (``classes_``, ``users_``) <-> ``{"dtype": ..., "values": [...]}``;
- :class:`~skcrnn._events.Sequences` <-> a dict of three int64 tensors;
- fitted arrays, sparse matrices and scalars <-> tensors, dicts of tensors
  and plain values (:func:`to_saved` / :func:`from_saved`, which checks
  shapes);
- :func:`write` / :func:`read` add and check a format stamp and a checksum of
  the content.
"""

import hashlib
import json
import os
import pickle
import warnings
from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp
import torch

from ._events import Sequences

#: Tag written in every file of this package.
FORMAT = "skcrnn-model"
#: Version of the layout; :func:`read` refuses newer files. Version 2 added
#: the checksum (version 1 files, without one, are still read).
FORMAT_VERSION = 2

_PLAIN_SCALARS = (str, bool, int, float)


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
        For labels of other types (bytes, decimals, ...), which a
        ``weights_only`` file cannot hold.
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
    """A :class:`Sequences` as a dict of int64 CPU tensors."""
    return {name: torch.as_tensor(np.asarray(getattr(sequences, name), dtype=np.int64))
            for name in ("user_codes", "indptr", "items")}


def sequences_from_tensors(tensors):
    """Inverse of :func:`sequences_to_tensors`."""
    return Sequences(**{name: tensors[name].cpu().numpy().astype(np.int64)
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
    """A fitted attribute as a value that a ``weights_only`` file holds.

    Parameters
    ----------
    value : ndarray, scipy sparse matrix, or scalar
        A numeric array, a sparse matrix, or an int, float, bool, str or
        None (numpy scalars included).

    Returns
    -------
    torch.Tensor, dict or scalar
        An array as a CPU tensor of the same dtype; a sparse matrix as
        ``{"csr_shape": [rows, cols], "data", "indices", "indptr"}`` (its CSR
        arrays as tensors); a numpy scalar as the Python scalar.

    Raises
    ------
    ValueError
        For anything else (object arrays included).
    """
    if sp.issparse(value):
        matrix = sp.csr_matrix(value)
        return {"csr_shape": list(matrix.shape),
                **{name: to_saved(getattr(matrix, name))
                   for name in ("data", "indices", "indptr")}}
    if isinstance(value, np.ndarray):
        try:
            return torch.from_numpy(np.ascontiguousarray(value))
        except TypeError:
            raise ValueError(f"An array of dtype {value.dtype} cannot be "
                             f"saved.") from None
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, _PLAIN_SCALARS):
        return value
    raise ValueError(f"A {type(value).__name__} cannot be saved.")


def from_saved(saved, spec, sizes, name):
    """Inverse of :func:`to_saved`, checked against what is expected.

    Parameters
    ----------
    saved : torch.Tensor, dict or scalar
        A value of :func:`to_saved`.
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
        The value, a numpy array sharing the tensor's memory.

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


def _to_array(tensor, name):
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} is of type {type(tensor).__name__}, expected "
                         f"a tensor")
    return tensor.detach().cpu().numpy()


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


# ------------------------------------------------------------------- files
def write(path, estimator_name, payload):
    """Write ``payload`` (plain values and tensors) with a format stamp.

    The record also holds a SHA-256 checksum of its content, which
    :func:`read` verifies: ``torch.load`` itself checks no checksum, so a
    flipped byte inside a tensor would otherwise load as a wrong weight.
    """
    record = {"format": FORMAT, "format_version": FORMAT_VERSION,
              "estimator": estimator_name, **payload}
    record["checksum"] = checksum(record)
    torch.save(record, path)


def read(path, estimator_name, map_location="cpu"):
    """Read a file of :func:`write`, checking that it holds ``estimator_name``.

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
        looks_like_zip = file.read(4) == b"PK\x03\x04"
    try:
        with warnings.catch_warnings():
            # a foreign pickle makes torch warn about its protocol before failing
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            record = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 -- damage surfaces as many types
        first_line = str(error).splitlines()[0] if str(error) else ""
        if looks_like_zip and not isinstance(error, pickle.UnpicklingError):
            problem = "is damaged or truncated (or is not a torch file)"
        else:  # not a zip, or a pickle that needs more than weights_only
            problem = "is not a skcrnn model file (or it is damaged)"
        raise ValueError(f"{path!s} {problem}: torch cannot read it: "
                         f"{type(error).__name__}: {first_line}") from error
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
    if version >= 2 and not _checksum_matches(record):
        raise ValueError(f"{path!s} is damaged: its content does not match its "
                         f"checksum.")
    if record.get("estimator") != estimator_name:
        raise ValueError(f"{path!s} holds a {record.get('estimator')!r}, not a "
                         f"{estimator_name!r}.")
    return record


def checksum(record):
    """SHA-256 hex digest of a record's content, its ``"checksum"`` aside.

    Parameters
    ----------
    record : dict
        Nested dicts, lists and tuples of tensors and plain values, as
        :func:`torch.load` returns them (dicts keep their order).

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
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().resolve_conj().resolve_neg().contiguous()
        hasher.update(f"tensor {tensor.dtype} {tuple(tensor.shape)}:".encode())
        hasher.update(tensor.reshape(-1).view(torch.uint8).numpy())
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
