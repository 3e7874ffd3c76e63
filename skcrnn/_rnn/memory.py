"""How much memory training a collaborative RNN takes: the memory model.

:func:`training_memory` adds up, in bytes, what a ``fit`` of
:class:`~skcrnn.CollaborativeGRURecommender` holds at its peak, from the
sizes of the problem and the estimator's parameters. With ``V`` items, ``U``
users, ``E`` events, ``H = hidden_size``, ``k`` gate blocks (3 for the GRU,
1 for tanh), ``W = k H``, ``r = rank``, ``B = batch_size``, ``T =
chunk_size``, ``S = n_negatives`` and 4-byte floats:

parameters ``P``
    ``V W + V (H + 1)`` (item inputs, output layer) plus the recurrent
    weights: ``U H W`` per user (``"per_user"``), ``H W`` shared
    (``"shared"``), ``H W + U H W`` (``"per_user"`` with a penalty: shared
    plus dense deviations), ``H W + 2 U k H r`` (``"low_rank"``) or
    ``H W + K H W + U K`` (``"basis"`` with ``K = rank`` shared directions);
optimizer statistics ``O``
    RMSProp one tensor of ``P`` (mean squares), Adam two (and a step count
    per row);
dense updates
    parameters updated densely every step (the full softmax's item rows,
    shared recurrent matrices) keep a gradient and, with RMSProp, a scratch
    buffer of their size each; the per-user rows, and with
    ``loss="sampled"`` the item rows too, are read and updated lazily
    (only a step's rows: negligible); the full softmax's backward adds
    ``(H + 1) V`` floats for the output layer's gradient;
after each epoch
    either the divergence check, whose ``isfinite`` takes about 1.75 times
    the largest parameter tensor (``P_L``, in bytes: a copy and two masks),
    or, at the end of a run, the copy of the statistics that becomes
    ``optimizer_state_``: ``max(1.75 P_L, O)`` on top of the above;
held from earlier
    with validation, one copy of ``P`` (the best epoch's weights); with
    ``refit``, the refit trains a second network while the first one and
    its statistics are still held: ``P + O`` instead;
activations
    per step, about ``B T (2 W + 10 H)`` floats for the GRU's chunk
    (``B T 6 H`` for tanh), ``3 B H W`` for a batch's gathered and composed
    per-user matrices, and either a cache-sized block of logits
    (``loss="full"``, 8 MiB) or ``3 B T (S + 1)`` logits (``"sampled"``);
events
    about ``80 E`` bytes while fitting (the encoded histories, training
    windows and padded batches in int64) and the fitted states ``8 U H``;
    the caller's DataFrame comes on top;
runtime
    about 96 MiB that a first fit adds to the process (torch's kernels and
    thread pools), measured.

On a GPU (``device="cuda"``) the parameters, statistics and activations are
device memory, as are the padded training batches (about ``16 E`` bytes)
and the fitted states; add about 0.5 GiB for CUDA's context. The events'
other copies stay in host memory.

So the peak is ``P + O + dense updates + max(1.75 P_L, O) + held +
activations + events + runtime``.

The figures do not include the interpreter and libraries (about 0.4 GiB of
resident memory for Python, numpy, pandas and torch on a CPU). The
"Scaling out" page of the documentation checks the model against measured
peaks and says what fits in 16 and 80 GB.
"""

#: Bytes per parameter (float32).
FLOAT = 4
#: What a first fit adds to a process besides its tensors (measured, bytes).
RUNTIME = 96 * 2 ** 20
#: Device memory that CUDA's context and kernels take (a typical figure).
CUDA_CONTEXT = 512 * 2 ** 20


def parameter_count(n_users, n_items, hidden_size, *, cell="gru",
                    recurrent_weights="per_user", rank=None, deviation_penalty=0.0):
    """The network's parameters, by part.

    Parameters
    ----------
    n_users, n_items, hidden_size : int
    cell : {"gru", "tanh"}
    recurrent_weights : {"per_user", "shared", "low_rank", "basis"}
    rank : int or None
        Of ``"low_rank"`` (None: ``min(4, hidden_size)``, the estimator's
        default), or the directions of ``"basis"`` (None: the estimator's
        default, 16).
    deviation_penalty : float
        ``> 0`` with ``"per_user"`` adds the shared matrices to the per-user
        deviations.

    Returns
    -------
    dict
        ``items`` (input and output rows), ``shared`` (shared recurrent
        matrices), ``users`` (per-user recurrent parameters), ``total``.
    """
    blocks = 3 if cell == "gru" else 1
    width = blocks * hidden_size
    items = n_items * width + n_items * (hidden_size + 1)
    square = hidden_size * width
    if recurrent_weights == "shared":
        shared, users = square, 0
    elif recurrent_weights == "low_rank":
        rank = min(4, hidden_size) if rank is None else rank
        shared, users = square, 2 * n_users * blocks * hidden_size * rank
    elif recurrent_weights == "basis":
        rank = 16 if rank is None else rank  # the estimator's default
        shared, users = square * (1 + rank), n_users * rank
    elif deviation_penalty > 0:
        shared, users = square, n_users * square
    else:
        shared, users = 0, n_users * square
    return {"items": items, "shared": shared, "users": users,
            "total": items + shared + users}


def training_memory(n_users, n_items, n_events, *, hidden_size=32, cell="gru",
                    recurrent_weights="per_user", rank=None, deviation_penalty=0.0,
                    loss="full", n_negatives=128, optimizer="rmsprop", batch_size=20,
                    chunk_size=64, validation_fraction=0.1, refit=True, device="cpu"):
    """Peak memory of a ``fit``, in bytes, by part (see the module's docstring).

    The keyword arguments are the estimator's parameters of the same names;
    ``device="cuda"`` gives the GPU's memory instead of the process's
    resident memory (not measured: no GPU was at hand).

    Returns
    -------
    dict
        ``parameters``, ``optimizer``, ``dense_updates``, ``after_epoch``,
        ``held``, ``activations``, ``events``, ``runtime`` and ``total``
        (their sum), in bytes.
    """
    counts = parameter_count(n_users, n_items, hidden_size, cell=cell,
                             recurrent_weights=recurrent_weights, rank=rank,
                             deviation_penalty=deviation_penalty)
    blocks = 3 if cell == "gru" else 1
    width = blocks * hidden_size
    params = counts["total"]
    statistics = params * (2 if optimizer == "adam" else 1)
    dense = counts["shared"] + (counts["items"] if loss == "full" else 0)
    dense_updates = dense * (2 if optimizer == "rmsprop" else 1)
    if loss == "full":
        dense_updates += (hidden_size + 1) * n_items
    factors = 2 if recurrent_weights == "low_rank" else 1
    shared_tensor = counts["shared"]
    if recurrent_weights == "basis":  # the shared matrices, or the directions
        shared_tensor = counts["shared"] - hidden_size * width
    largest = max(n_items * width, counts["users"] // factors, shared_tensor)
    held = 0
    if validation_fraction > 0:
        held = params + statistics if refit else params
    slots = batch_size * chunk_size
    per_slot = 2 * width + 10 * hidden_size if cell == "gru" else 6 * hidden_size
    activations = slots * per_slot + 3 * batch_size * hidden_size * width
    if loss == "full":
        activations += 2 ** 21 + (hidden_size + 1) * slots * 2
    else:
        activations += 3 * slots * (n_negatives + 1) + (slots + n_negatives) * hidden_size
    parts = {
        "parameters": FLOAT * params,
        "optimizer": FLOAT * statistics,
        "dense_updates": FLOAT * dense_updates,
        "after_epoch": max(int(1.75 * FLOAT * largest), FLOAT * statistics),
        "held": FLOAT * held,
        "activations": FLOAT * activations,
        "events": (80 if device == "cpu" else 16) * n_events + 8 * n_users * hidden_size,
        "runtime": RUNTIME if device == "cpu" else CUDA_CONTEXT,
    }
    parts["total"] = sum(parts.values())
    return parts
