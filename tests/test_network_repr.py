"""The networks print their settings (``extra_repr``), as ``torch.nn`` modules do."""

import pytest

from skcrnn._attention.network import SelfAttentionNetwork
from skcrnn._rnn.network import CollaborativeRNN


@pytest.mark.parametrize("network", [
    CollaborativeRNN(5, 7, 3),
    CollaborativeRNN(5, 7, 4, cell="tanh", shared=True),
    CollaborativeRNN(5, 7, 4, candidate="sigmoid", copy_history=True,
                     recurrent_kind="low_rank", rank=2),
    SelfAttentionNetwork(5, 7, 8, 2, 2, 6),
    SelfAttentionNetwork(5, 7, 8, 1, 4, 3, user_embedding=True, tie_weights=False),
], ids=["gru", "tanh-shared", "low-rank-copy", "attention", "attention-untied"])
def test_networks_print_their_config(network):
    config = network.config
    assert network.extra_repr() == ", ".join(
        f"{name}={value!r}" for name, value in config.items())
    printed, name = repr(network), type(network).__name__
    if "\n" in printed:  # with submodules: the settings on the first inner line
        assert printed.splitlines()[:2] == [f"{name}(", f"  {network.extra_repr()}"]
    else:
        assert printed == f"{name}({network.extra_repr()})"
    # what it prints rebuilds it
    rebuilt = eval(f"{type(network).__name__}({network.extra_repr()})",
                   {type(network).__name__: type(network)})
    assert rebuilt.config == config
    assert ([(name, p.shape) for name, p in rebuilt.named_parameters()]
            == [(name, p.shape) for name, p in network.named_parameters()])


def test_a_fitted_model_prints_its_network(events):
    from skcrnn import CollaborativeGRURecommender
    model = CollaborativeGRURecommender(hidden_size=3, max_epochs=1, device="cpu",
                                        random_state=0).fit(events)
    assert "hidden_size=3" in repr(model.network_)
    assert f"n_items={model.n_items_}" in repr(model.network_)
