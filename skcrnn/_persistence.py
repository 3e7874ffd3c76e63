"""Saving fitted estimators to one ``torch.save`` file that needs no pickle.

A file is a dict of plain Python values and tensors only, so that
``torch.load(path, weights_only=True)`` reads it. The helpers here turn the
package's fitted pieces into such values and back:

- label arrays (``classes_``, ``users_``) <-> ``{"dtype": ..., "values": [...]}``;
- :class:`~skcrnn._events.Sequences` <-> a dict of three int64 tensors;
- :func:`write` / :func:`read` add and check a format stamp.
"""

import json
import pickle
import warnings
import zipfile
from numbers import Integral, Real

import numpy as np
import torch

from ._events import Sequences

#: Tag written in every file of this package.
FORMAT = "skcrnn-model"
#: Version of the layout; :func:`read` refuses newer files.
FORMAT_VERSION = 1

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


# ------------------------------------------------------------------- params
def plain_params(params):
    """Estimator parameters as a JSON-able dict.

    A ``random_state`` that is a generator object becomes ``None`` (its state
    is not saved). Other values that JSON cannot hold raise ``ValueError``.
    """
    plain = {}
    for name, value in params.items():
        if name == "random_state" and not (value is None
                                           or isinstance(value, Integral)):
            value = None
        elif isinstance(value, np.generic):
            value = value.item()
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
    """Write ``payload`` (plain values and tensors) with a format stamp."""
    record = {"format": FORMAT, "format_version": FORMAT_VERSION,
              "estimator": estimator_name, **payload}
    torch.save(record, path)


def read(path, estimator_name, map_location="cpu"):
    """Read a file of :func:`write`, checking that it holds ``estimator_name``.

    Raises
    ------
    ValueError
        If the file is not one of this package's model files, was written by
        a newer version, or holds another estimator.
    """
    try:
        with warnings.catch_warnings():
            # a foreign pickle makes torch warn about its protocol before failing
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            record = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError,
            AttributeError, TypeError, zipfile.BadZipFile) as error:
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise ValueError(
            f"{path!s} is not a skcrnn model file (or it is damaged): "
            f"{type(error).__name__}: {first_line}") from error
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{path!s} is not a skcrnn model file: it has no "
                         f"{FORMAT!r} stamp.")
    version = record.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path!s} has format version {version!r}; this version of skcrnn "
            f"reads versions up to {FORMAT_VERSION}. Upgrade skcrnn.")
    if record.get("estimator") != estimator_name:
        raise ValueError(f"{path!s} holds a {record.get('estimator')!r}, not a "
                         f"{estimator_name!r}.")
    return record
