"""save() replaces a file atomically, and refuses a bad path before any work.

A save that fails or is killed midway, or a load that runs while another
process saves, must never see or leave a partial file at the path: the file
that was there stays whole until the new one replaces it in one rename.
"""

import os
import pickle
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skcrnn import BigramRecommender, UnigramRecommender

ROOT = Path(__file__).resolve().parents[1]


def events(n_items, n_events, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "user": rng.integers(0, 50, n_events),
        "item": [f"item {i}" for i in rng.integers(0, n_items, n_events)],
        "timestamp": np.arange(n_events)})


@pytest.fixture(scope="module")
def small():
    return UnigramRecommender().fit(events(10, 100))


@pytest.fixture(scope="module")
def large():
    """A model whose file takes a few MB, so that writing it takes a while."""
    return UnigramRecommender().fit(events(100_000, 200_000, seed=1))


def leftovers(directory, keep=("model.pt",)):
    return sorted(name for name in os.listdir(directory) if name not in keep)


def run_python(code, *args, **kwargs):
    """Run ``code`` in a fresh interpreter with the package importable."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-B", "-c", textwrap.dedent(code),
                             *map(str, args)], env=environment, cwd=ROOT, **kwargs)


# ------------------------------------------------------------ atomicity
def test_failed_write_keeps_the_old_file(small, large, tmp_path):
    """A save that runs out of room (here: a file size limit) midway leaves
    the previous file whole and no temporary file."""
    path = tmp_path / "model.pt"
    small.save(path)
    before = path.read_bytes()
    large.save(tmp_path / "large.pt")
    limit = (len(before) + (tmp_path / "large.pt").stat().st_size) // 2
    (tmp_path / "large.pt").unlink()
    (tmp_path / "large.pkl").write_bytes(pickle.dumps(large))
    child = run_python("""
        import pickle, resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
        with open(sys.argv[1], "rb") as file:
            model = pickle.load(file)
        resource.setrlimit(resource.RLIMIT_FSIZE,
                           (int(sys.argv[3]), resource.RLIM_INFINITY))
        model.save(sys.argv[2])
        """, tmp_path / "large.pkl", path, limit, stderr=subprocess.PIPE, text=True)
    _, errors = child.communicate(timeout=120)
    assert child.returncode != 0, "the save should have failed"
    (tmp_path / "large.pkl").unlink()
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []
    UnigramRecommender.load(path)
    assert "OSError: [Errno 27] File too large" in errors, errors


def test_interrupted_save_keeps_the_old_file(small, large, tmp_path, monkeypatch):
    """Ctrl-C (or any exception) in the middle of writing: old file kept,
    temporary file removed."""
    path = tmp_path / "model.pt"
    small.save(path)
    before = path.read_bytes()
    write_array = np.lib.format.write_array
    calls = []

    def interrupted(file, array, *args, **kwargs):
        calls.append(array.shape)
        if len(calls) == 2:
            file.write(b"\x93NUMPY partial")
            raise KeyboardInterrupt
        return write_array(file, array, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", interrupted)
    with pytest.raises(KeyboardInterrupt):
        large.save(path)
    assert len(calls) == 2
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_killed_save_keeps_a_whole_file(small, large, tmp_path):
    """SIGKILL at any moment of a loop of saves: the path always holds a
    whole model (the killed writer may leave a temporary file)."""
    path = tmp_path / "model.pt"
    small.save(path)
    for name, model in (("small", small), ("large", large)):
        (tmp_path / f"{name}.pkl").write_bytes(pickle.dumps(model))
    rng = np.random.default_rng(0)
    for _ in range(3):
        child = run_python("""
            import pickle, sys
            models = []
            for name in sys.argv[2:]:
                with open(name, "rb") as file:
                    models.append(pickle.load(file))
            print("ready", flush=True)
            while True:
                for model in models:
                    model.save(sys.argv[1])
            """, path, tmp_path / "small.pkl", tmp_path / "large.pkl",
            stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0.2, 0.6))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        child.stdout.close()
        assert (len(UnigramRecommender.load(path).classes_)
                in (len(small.classes_), len(large.classes_)))


def test_load_while_another_process_saves(small, large, tmp_path):
    """Every load of a file that another process keeps re-saving reads a
    whole model, the old or the new one."""
    path = tmp_path / "model.pt"
    small.save(path)
    for name, model in (("small", small), ("large", large)):
        (tmp_path / f"{name}.pkl").write_bytes(pickle.dumps(model))
    child = run_python("""
        import pickle, sys
        models = []
        for name in sys.argv[2:]:
            with open(name, "rb") as file:
                models.append(pickle.load(file))
        print("ready", flush=True)
        for _ in range(15):
            for model in models:
                model.save(sys.argv[1])
        """, path, tmp_path / "small.pkl", tmp_path / "large.pkl",
        stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "ready\n"
    sizes, failures = [], []
    while child.poll() is None:
        try:
            sizes.append(len(UnigramRecommender.load(path).classes_))
        except ValueError as error:
            failures.append(str(error))
    child.stdout.close()
    assert child.returncode == 0
    assert failures == []
    assert set(sizes) <= {len(small.classes_), len(large.classes_)} and sizes


def test_save_keeps_the_mode_of_the_file_it_replaces(small, tmp_path):
    path = tmp_path / "model.pt"
    small.save(path)
    path.chmod(0o640)
    small.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_new_file_gets_the_usual_mode(small, tmp_path):
    """As ``open(path, "w")`` would create it (the umask applies), not the
    owner-only mode of a temporary file."""
    umask = os.umask(0o022)
    os.umask(umask)
    small.save(tmp_path / "model.pt")
    (tmp_path / "reference").touch()
    assert (stat.S_IMODE((tmp_path / "model.pt").stat().st_mode)
            == stat.S_IMODE((tmp_path / "reference").stat().st_mode))


def test_save_through_a_symlink_replaces_its_target(small, tmp_path):
    (tmp_path / "models").mkdir()
    target = tmp_path / "models" / "v1.pt"
    target.write_bytes(b"old")
    link = tmp_path / "current.pt"
    link.symlink_to(target)
    small.save(link)
    assert link.is_symlink()
    UnigramRecommender.load(target)
    assert leftovers(tmp_path, keep=("models", "current.pt")) == []
    assert leftovers(tmp_path / "models", keep=("v1.pt",)) == []


# ---------------------------------------------------------------- paths
@pytest.fixture
def no_serialization(monkeypatch):
    """Fail the test if save gets as far as gathering what to write."""
    def refuse(self):
        raise AssertionError("serialization started before the path was checked")
    monkeypatch.setattr(BigramRecommender, "_fitted_state", refuse)


@pytest.fixture(scope="module")
def bigram():
    return BigramRecommender().fit(events(10, 100))


def test_path_that_is_a_directory(bigram, tmp_path, no_serialization):
    with pytest.raises(IsADirectoryError, match="is a directory") as error:
        bigram.save(tmp_path)
    assert str(tmp_path) in str(error.value)
    assert leftovers(tmp_path) == []


def test_missing_parent_directory(bigram, tmp_path, no_serialization):
    path = tmp_path / "missing" / "model.pt"
    with pytest.raises(FileNotFoundError, match="does not exist") as error:
        bigram.save(path)
    assert str(path) in str(error.value)
    assert str(tmp_path / "missing") in str(error.value)


def test_parent_that_is_a_file(bigram, tmp_path, no_serialization):
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "model.pt"
    with pytest.raises(NotADirectoryError, match="is not a directory") as error:
        bigram.save(path)
    assert str(path) in str(error.value)


def test_unwritable_directory(bigram, tmp_path, no_serialization):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("this user may write anywhere (root)")
        with pytest.raises(PermissionError, match="permission") as error:
            bigram.save(locked / "model.pt")
        assert str(locked / "model.pt") in str(error.value)
    finally:
        locked.chmod(0o700)


def test_directory_that_refuses_new_files(bigram, tmp_path, monkeypatch):
    """However the file system refuses the temporary file (a read-only mount,
    an ACL, a quota), the error names the path being saved, not the
    temporary file."""
    path = tmp_path / "model.pt"
    real_open = os.open

    def refusing(name, flags, *args, **kwargs):
        if flags & os.O_CREAT and Path(name).parent == tmp_path:
            raise PermissionError(13, "Permission denied", str(name))
        return real_open(name, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)
    with pytest.raises(PermissionError, match="Permission denied") as error:
        bigram.save(path)
    assert str(path) in str(error.value)
    assert error.value.filename == str(path)
    assert leftovers(tmp_path) == []
