"""Checkpoints of a torch model's training, to resume a fit that was killed.

A fit with a ``checkpoint_dir`` keeps one file there, :data:`FILENAME`,
rewritten atomically after every epoch (:func:`skcrnn._persistence.write`:
a zip of JSON and arrays, read back without pickle) with

- ``fingerprint``: what the fit that wrote it depended on (training
  parameters, the encoded sequences); a fit resumes only from its own;
- ``seeds``: the two seeds the fit drew, reused when resuming;
- ``phase``: 1 while training with validation, 2 during the refit on all
  events, with ``first_history`` and ``first_best_epoch`` (what phase 1
  produced);
- ``training``: the state that :func:`~skcrnn._torch.loop.train` saves.
"""

import contextlib
import hashlib
import os
from pathlib import Path

import numpy as np

from .. import _persistence

#: Name of the checkpoint file inside ``checkpoint_dir``.
FILENAME = "checkpoint.pt"

_REQUIRED = ("fingerprint", "seeds", "phase", "first_history", "first_best_epoch",
             "training")


def fingerprint(params, sequences, n_items):
    """What a fit's training depends on, as plain values.

    The one fingerprint of a fit: a checkpoint resumes only a fit with the
    same one, and the ranks of a multi-process fit check that they share it.

    Parameters
    ----------
    params : dict
        The estimator parameters that affect training.
    sequences : Sequences
        The encoded training sequences (one group per user).
    n_items : int

    Returns
    -------
    dict
        The parameters (see :func:`~skcrnn._persistence.plain_params`),
        ``n_users``, ``n_items`` and ``data``, a SHA-256 of the sequences'
        arrays. Labels are left out: training sees only their codes (a
        relabelled log resumes its checkpoint, and ranks that encode their
        events alike train alike).
    """
    digest = hashlib.sha256()
    for name in ("user_codes", "indptr", "items"):
        array = np.ascontiguousarray(getattr(sequences, name), dtype="<i8")
        digest.update(name.encode())
        digest.update(array.tobytes())
    return {**_persistence.plain_params(params), "n_users": int(sequences.n_groups),
            "n_items": int(n_items), "data": digest.hexdigest()}


class Checkpoint:
    """The checkpoint file of one fit.

    Parameters
    ----------
    directory : str or path-like
        Created if missing.
    estimator_name : str
        Stamped in the file (with `` checkpoint`` appended, so that a model
        file saved with ``save`` is not mistaken for a checkpoint).
    fingerprint : dict
        Of :func:`fingerprint`; written in the file and required to resume.
    """

    def __init__(self, directory, estimator_name, fingerprint):
        self.path = Path(os.fspath(directory)) / FILENAME
        self.stamp = f"{estimator_name} checkpoint"
        self.fingerprint = fingerprint

    def __str__(self):
        return f"checkpoint {self.path}"

    def read(self):
        """The record in the file, or None when there is no file.

        Raises
        ------
        ValueError
            If the file is damaged, is not a checkpoint of this estimator, or
            was written by a fit with other parameters or data.
        """
        if not self.path.exists():
            return None
        try:
            record = _persistence.read(self.path, self.stamp)
            _check_header(record)
        except (PermissionError, IsADirectoryError):
            raise
        except ValueError as error:
            detail = str(error).replace(f"{self.path!s} ", "it ").rstrip(".")
            raise ValueError(f"Cannot resume from {self}: {detail}. Delete it to "
                             f"start afresh.") from error
        except OSError as error:  # torch reading a truncated zip, among others
            raise ValueError(f"Cannot resume from {self}: it is damaged "
                             f"({type(error).__name__}: {error}). Delete it to "
                             f"start afresh.") from error
        self._check_fingerprint(record["fingerprint"])
        return record

    def _check_fingerprint(self, saved):
        if not isinstance(saved, dict):
            raise ValueError(f"Cannot resume from {self}: its fingerprint is "
                             f"damaged. Delete it to start afresh.")
        differences = [_difference(name, saved.get(name, "unset"),
                                   self.fingerprint.get(name, "unset"))
                       for name in sorted(set(saved) | set(self.fingerprint))
                       if saved.get(name) != self.fingerprint.get(name)]
        if differences:
            raise ValueError(
                f"Cannot resume from {self}: it was written by a fit with "
                f"{'; '.join(differences)}. Delete it, or use another "
                f"checkpoint_dir, to start afresh.")

    def phase(self, phase, seeds, first_history=None, first_best_epoch=None,
              resume_from=None):
        """The checkpoint of one training phase, as ``train`` uses it.

        Parameters
        ----------
        phase : {1, 2}
        seeds : array-like of 2 ints
        first_history, first_best_epoch
            For phase 2: what phase 1 produced.
        resume_from : dict or None
            The training state to resume from (``record["training"]`` of a
            record of :meth:`read` of this phase), None to start afresh.
        """
        return _Phase(self, phase, seeds, first_history, first_best_epoch,
                      resume_from)

    def write(self, record):
        """Replace the file by ``record`` atomically (a crash leaves the old one)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _persistence.write(self.path, self.stamp,
                           {"fingerprint": self.fingerprint, **record})

    def remove(self):
        """Delete the file, and temporary files that killed writers left."""
        self.path.unlink(missing_ok=True)
        for stale in self.path.parent.glob(f".{FILENAME}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()


class _Phase:
    """One phase's view of a :class:`Checkpoint`: ``load()`` and ``save(state)``."""

    def __init__(self, checkpoint, phase, seeds, first_history, first_best_epoch,
                 resume_from):
        self.checkpoint = checkpoint
        self.header = {"phase": phase, "seeds": [int(seed) for seed in seeds],
                       "first_history": first_history,
                       "first_best_epoch": first_best_epoch}
        self.resume_from = resume_from

    def __str__(self):
        return str(self.checkpoint)

    def load(self):
        return self.resume_from

    def save(self, state):
        self.checkpoint.write({**self.header, "training": state})


def _difference(name, saved, now):
    if name == "data":
        return "other training data"
    return f"{name}={saved!r} in the checkpoint, {now!r} now"


def _check_header(record):
    """Raise ``ValueError`` if what the estimator reads of ``record`` is off."""
    missing = [key for key in _REQUIRED if key not in record]
    if missing:
        raise ValueError(f"it has no {missing}")
    seeds, phase = record["seeds"], record["phase"]
    if not (isinstance(seeds, list) and len(seeds) == 2
            and all(isinstance(seed, int) for seed in seeds)):
        raise ValueError(f"its seeds are {seeds!r}, not two ints")
    if phase == 2 and not (isinstance(record["first_history"], list)
                           and isinstance(record["first_best_epoch"], int)):
        raise ValueError("its phase 2 lacks the results of phase 1")
    if phase not in (1, 2) or not isinstance(record["training"], dict):
        raise ValueError(f"its phase ({phase!r}) or training state is damaged")
