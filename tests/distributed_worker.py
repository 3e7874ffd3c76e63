"""One process of the multi-process tests (tests/test_distributed.py).

Run with RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set, as torchrun
does: ``python distributed_worker.py OUT_DIR SCENARIO PARAMS_JSON``. Rank 0
saves the fitted model to ``OUT_DIR/model.skcrnn``; a rank that fails
writes ``OUT_DIR/rank<R>.error`` (the exception's type and message).
"""

import json
import os
import sys
from pathlib import Path

import torch


def events(n_users=9, seed=0):
    from skcrnn.datasets import make_sequences
    return make_sequences(n_users=n_users, n_items=15, n_events=600, min_length=20,
                          random_state=seed)


def main(out_dir, scenario, params):
    import skcrnn
    from skcrnn._torch import loop
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    data = events()
    if scenario == "mismatch" and rank == 1:
        data = events(seed=1)
    if scenario == "few-users":
        data = events(n_users=2)
    if scenario == "dies" and rank == 1:
        original = loop._train_epoch

        def dying(*args, **kwargs):
            os._exit(3)  # a process that dies in its first epoch
        loop._train_epoch = dying
        del original
    model = skcrnn.CollaborativeGRURecommender(**params)
    try:
        fitted = skcrnn.fit_distributed(model, data, timeout=20)
    except Exception as error:  # reported to the test
        (Path(out_dir) / f"rank{rank}.error").write_text(
            f"{type(error).__name__}: {error}")
        return 1
    if rank == 0:
        fitted.save(Path(out_dir) / "model.skcrnn")
    elif fitted is not None or hasattr(model, "network_"):
        (Path(out_dir) / f"rank{rank}.error").write_text(
            "a rank other than 0 got a fitted model")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))
