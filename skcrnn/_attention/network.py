"""The causal self-attention network (SASRec-like, pre-norm).

A *window* is a row of at most ``max_history`` input tokens, each an item
code or :data:`START` (the start of a history); a token at slot ``c`` sees
the tokens at slots ``<= c`` only (causal mask), and its output predicts
the item that follows it. With ``H = hidden_size``, the parameters are

``item_embedding`` (n_items, H) and ``start_embedding`` (1, H)
    the input vectors of the items and of the start token;
``position_embedding`` (max_history, H)
    a learned vector per slot of the window, added to the token's;
``user_embedding`` (n_users, H), with ``user_embedding=True``
    a learned vector per user, added to every token of the user's windows
    (the collaborative option); a user without a row (unknown, or added by
    ``update``) gets the mean of the rows;
``blocks.<b>.*``, ``b < n_blocks``
    pre-norm transformer blocks: ``x + attention(layer_norm(x))``, then
    ``x + feed_forward(layer_norm(x))``, with ``n_heads`` heads of causal
    scaled dot-product attention and a position-wise feed-forward layer
    ``H -> H -> H`` with a ReLU (as SASRec's);
``final_norm_weight``, ``final_norm_bias`` (H,)
    the layer norm of the last block's output, the hidden state ``h``;
``output_bias`` (n_items,), and ``output_weight`` (n_items, H) unless tied
    the output layer shared by all users, ``logits = h @ W.T +
    output_bias``, where ``W`` (:meth:`SelfAttentionNetwork.output_matrix`)
    is ``item_embedding`` with ``tie_weights`` (as SASRec), else
    ``output_weight``.

Dropout (training only) applies to the input vectors, to the attention
weights and to each block's two residual branches (and inside the
feed-forward layer); its masks are drawn from a given ``torch.Generator``,
so that a seeded fit is reproducible.

The module prints its settings (``extra_repr``): its
:attr:`~SelfAttentionNetwork.config`.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .._torch.dropout import Dropout

#: Token of the start of a user's history.
START = -1
#: Epsilon of every layer norm.
_NORM_EPS = 1e-5


class SelfAttentionNetwork(nn.Module):
    """Parameters and forward pass of the causal self-attention network.

    Parameters
    ----------
    n_users, n_items : int
        Sizes of the vocabularies.
    hidden_size : int
        ``H``, the width of every vector; a multiple of ``n_heads``.
    n_blocks : int
        Transformer blocks.
    n_heads : int
        Attention heads of each block.
    max_history : int
        Slots of a window (rows of ``position_embedding``).
    user_embedding : bool, default=False
        Add a learned vector per user to the inputs.
    tie_weights : bool, default=False
        The output layer's weights are the item embeddings.
    dtype : torch.dtype, default=torch.float32
        Type of the parameters.

    Attributes
    ----------
    row_indexed : dict
        Parameters indexed by user or by item along their first dimension
        (see :mod:`skcrnn._torch.optim`).

    Notes
    -----
    The parameters are left uninitialized; call :meth:`reset_parameters`.
    """

    def __init__(self, n_users, n_items, hidden_size, n_blocks, n_heads, max_history,
                 user_embedding=False, tie_weights=False, dtype=torch.float32):
        super().__init__()
        hidden_size = int(hidden_size)
        if hidden_size % int(n_heads):
            raise ValueError(f"hidden_size={hidden_size} is not a multiple of "
                             f"n_heads={n_heads}")
        self.n_users = int(n_users)
        self.hidden_size = hidden_size
        self.n_heads = int(n_heads)
        self.max_history = int(max_history)
        self.has_user_embedding = bool(user_embedding)
        self.tie_weights = bool(tie_weights)

        def empty(*shape):
            return nn.Parameter(torch.empty(*shape, dtype=dtype))

        self.item_embedding = empty(n_items, hidden_size)
        self.start_embedding = empty(1, hidden_size)
        self.position_embedding = empty(self.max_history, hidden_size)
        if self.has_user_embedding:
            self.user_embedding = empty(self.n_users, hidden_size)
        self.blocks = nn.ModuleList(_Block(hidden_size, dtype) for _ in range(n_blocks))
        self.final_norm_weight = empty(hidden_size)
        self.final_norm_bias = empty(hidden_size)
        if not self.tie_weights:
            self.output_weight = empty(n_items, hidden_size)
        self.output_bias = empty(n_items)
        self.row_indexed = {"item_embedding": "item", "output_bias": "item"}
        if not self.tie_weights:
            self.row_indexed["output_weight"] = "item"
        if self.has_user_embedding:
            self.row_indexed["user_embedding"] = "user"

    @property
    def config(self):
        """Constructor arguments that rebuild the same architecture."""
        return {"n_users": self.n_users, "n_items": self.item_embedding.shape[0],
                "hidden_size": self.hidden_size, "n_blocks": len(self.blocks),
                "n_heads": self.n_heads, "max_history": self.max_history,
                "user_embedding": self.has_user_embedding,
                "tie_weights": self.tie_weights}

    def extra_repr(self):
        """The settings, as ``torch.nn`` modules print them: :attr:`config`."""
        return ", ".join(f"{name}={value!r}" for name, value in self.config.items())

    def output_matrix(self):
        """The output layer's weights (``output_weight``, or the item embeddings)."""
        return self.item_embedding if self.tie_weights else self.output_weight

    def reset_parameters(self, generator=None):
        """Initial weights; returns the network.

        Embeddings, attention and feed-forward matrices and output weights
        are drawn from N(0, 1/H) (standard deviation ``1/sqrt(H)``); biases
        are zero, layer norms the identity, and the user embeddings zero, so
        that every user starts as the shared model (and the other weights
        are those of the same seed without user embeddings).

        The numbers are drawn on the CPU with ``generator`` and copied to the
        parameters' device, so that a seed gives the same start anywhere.
        """
        std = 1.0 / math.sqrt(self.hidden_size)
        drawn = [self.item_embedding, self.start_embedding, self.position_embedding]
        for block in self.blocks:
            drawn += [block.attention_weight, block.projection_weight,
                      block.expand_weight, block.contract_weight]
        if not self.tie_weights:
            drawn.append(self.output_weight)
        with torch.no_grad():
            for weight in drawn:
                weight.copy_(torch.randn(weight.shape, generator=generator,
                                         dtype=weight.dtype) * std)
            for block in self.blocks:
                block.reset_constants()
            self.final_norm_weight.fill_(1.0)
            self.final_norm_bias.zero_()
            self.output_bias.zero_()
            if self.has_user_embedding:
                self.user_embedding.zero_()
        return self

    def user_vectors(self, users, dtype=None):
        """The user embeddings of ``users``, the mean row for those without one.

        Parameters
        ----------
        users : LongTensor of shape (B,)
            User codes; ``-1`` (an unknown user) and codes past the rows
            (users added by ``update``) get the mean of the rows, computed in
            double precision and rounded once to the parameters' type (the
            row that ``partial_fit`` then gives them).
        dtype : torch.dtype, optional
            Cast to this type.

        Returns
        -------
        Tensor of shape (B, H), or None without user embeddings
        """
        if not self.has_user_embedding:
            return None
        table = self.user_embedding
        unknown = (users < 0) | (users >= table.shape[0])
        vectors = table.index_select(0, torch.where(unknown, 0, users))
        if bool(unknown.any()):
            mean = table.mean(dim=0, dtype=torch.float64).to(table.dtype)
            vectors = torch.where(unknown[:, None], mean, vectors)
        return vectors if dtype is None else vectors.to(dtype)

    def hidden_states(self, tokens, user_vectors=None, dtype=None, dropout=0.0,
                      generator=None, query_slots=None):
        """The hidden state after each slot of each window, or of the slots asked.

        Parameters
        ----------
        tokens : LongTensor of shape (B, L), ``L <= max_history``
            Item codes, :data:`START` for the start token; each row's real
            tokens first, then any padding (which the causal mask keeps
            from every real slot).
        user_vectors : Tensor of shape (B, H), optional
            Added to every input of the row (:meth:`user_vectors`, or rows
            read for training).
        dtype : torch.dtype, optional
            Compute in this type (the parameters are cast); by default the
            parameters'.
        dropout : float, default=0.0
            Dropout rate; used only with a ``generator``.
        generator : torch.Generator, optional
            Draws the dropout masks (training); None: no dropout.
        query_slots : LongTensor of shape (B, S), optional
            The slots of each row whose states are wanted. Every slot is
            still read by the blocks before the last (and as the last
            block's keys and values), but the last block's queries, its
            attention output and feed-forward layer, and the final norm
            only run for these: training reads a window's last slots only,
            scoring one slot per window.

        Returns
        -------
        Tensor of shape (B, L, H), or (B, S, H) with ``query_slots``
        """
        dtype = self.item_embedding.dtype if dtype is None else dtype
        drop = Dropout(dropout if generator is not None else 0.0, generator)
        n_slots = tokens.shape[1]
        if n_slots > self.max_history:
            raise ValueError(f"a window of {n_slots} tokens is longer than "
                             f"max_history={self.max_history}")
        items = F.embedding(tokens.clamp(min=0), self.item_embedding).to(dtype)
        inputs = torch.where((tokens == START)[..., None],
                             self.start_embedding[0].to(dtype), items)
        inputs = inputs + self.position_embedding[:n_slots].to(dtype)
        if user_vectors is not None:
            inputs = inputs + user_vectors.to(dtype)[:, None, :]
        states = drop(inputs)
        future = torch.ones(n_slots, n_slots, dtype=torch.bool,
                            device=tokens.device).triu_(1)
        last = len(self.blocks) - 1
        for index, block in enumerate(self.blocks):
            states = block(states, future, self.n_heads, dtype, drop,
                           query_slots if index == last else None)
        return F.layer_norm(states, (self.hidden_size,),
                            self.final_norm_weight.to(dtype),
                            self.final_norm_bias.to(dtype), _NORM_EPS)


class _Block(nn.Module):
    """One pre-norm transformer block's parameters and its computation."""

    def __init__(self, hidden_size, dtype):
        super().__init__()

        def empty(*shape):
            return nn.Parameter(torch.empty(*shape, dtype=dtype))

        self.attention_norm_weight = empty(hidden_size)
        self.attention_norm_bias = empty(hidden_size)
        # queries, keys and values
        self.attention_weight = empty(3 * hidden_size, hidden_size)
        self.attention_bias = empty(3 * hidden_size)
        self.projection_weight = empty(hidden_size, hidden_size)
        self.projection_bias = empty(hidden_size)
        self.feed_forward_norm_weight = empty(hidden_size)
        self.feed_forward_norm_bias = empty(hidden_size)
        self.expand_weight = empty(hidden_size, hidden_size)
        self.expand_bias = empty(hidden_size)
        self.contract_weight = empty(hidden_size, hidden_size)
        self.contract_bias = empty(hidden_size)

    def reset_constants(self):
        """Layer norms to the identity, biases to zero (the matrices are drawn)."""
        for norm in (self.attention_norm_weight, self.feed_forward_norm_weight):
            norm.fill_(1.0)
        for bias in (self.attention_norm_bias, self.attention_bias,
                     self.projection_bias, self.feed_forward_norm_bias,
                     self.expand_bias, self.contract_bias):
            bias.zero_()

    def forward(self, states, future, n_heads, dtype, drop, query_slots=None):
        """The block's output at every slot, or at ``query_slots`` (B, S) only."""
        batch, n_slots, size = states.shape
        head_size = size // n_heads

        def cast(parameter):
            return parameter.to(dtype)

        def heads(projected, parts):  # (B, L, parts*H) -> parts x (B, heads, L, h)
            return projected.view(batch, -1, parts, n_heads, head_size).permute(
                2, 0, 3, 1, 4)

        normed = F.layer_norm(states, (size,), cast(self.attention_norm_weight),
                              cast(self.attention_norm_bias), _NORM_EPS)
        weight, bias = cast(self.attention_weight), cast(self.attention_bias)
        if query_slots is None:
            queries, keys, values = heads(F.linear(normed, weight, bias), 3)
        else:
            keys, values = heads(F.linear(normed, weight[size:], bias[size:]), 2)
            rows = query_slots[..., None].expand(-1, -1, size)
            (queries,) = heads(F.linear(normed.gather(1, rows), weight[:size],
                                        bias[:size]), 1)
            future = (torch.arange(n_slots, device=states.device)
                      > query_slots[..., None])[:, None]
            states = states.gather(1, rows)
        scores = (queries @ keys.transpose(-1, -2)) / math.sqrt(head_size)
        weights = drop(torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1))
        attended = (weights @ values).transpose(1, 2).reshape(states.shape)
        states = states + drop(F.linear(attended, cast(self.projection_weight),
                                        cast(self.projection_bias)))
        normed = F.layer_norm(states, (size,), cast(self.feed_forward_norm_weight),
                              cast(self.feed_forward_norm_bias), _NORM_EPS)
        inner = drop(F.relu(F.linear(normed, cast(self.expand_weight),
                                     cast(self.expand_bias))))
        return states + drop(F.linear(inner, cast(self.contract_weight),
                                      cast(self.contract_bias)))
