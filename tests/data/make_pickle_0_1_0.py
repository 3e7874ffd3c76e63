"""Write the pickle of release 0.1.0 that test_persistence_versions.py loads.

The pickle was written by skcrnn 0.1.0 (commit 245de2d), which stamped no
version in its pickles, with::

    git archive 245de2d | tar -x -C /tmp/skcrnn_0_1_0
    cd tests/data && PYTHONPATH=/tmp/skcrnn_0_1_0 python make_pickle_0_1_0.py

The expected scores are written with it. (A recurrent model of 0.1.0 does
not unpickle today: its class lived in a module, ``skcrnn._rnn._estimator``,
that later versions do not have; save and load it instead.)
"""

import pickle
from pathlib import Path

import numpy as np

import skcrnn
from make_persistence_v2 import events
from skcrnn import BigramRecommender

HERE = Path(__file__).resolve().parent


def main():
    frame = events()
    model = BigramRecommender(alpha=2.0).fit(frame)
    (HERE / "pickle_0_1_0_bigram.pkl").write_bytes(pickle.dumps(model, protocol=4))
    np.save(HERE / "pickle_0_1_0_bigram_scores.npy", model.score_samples(frame),
            allow_pickle=False)
    print("written with skcrnn", skcrnn.__version__, "from",
          Path(skcrnn.__file__).parent)


if __name__ == "__main__":
    main()
