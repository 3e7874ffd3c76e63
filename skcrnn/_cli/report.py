"""Tables and plots of a model comparison (used by ``skcrnn reproduce``)."""

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def per_user_errors(model, test, user_col="user"):
    """Each user's mean negative log-likelihood of its held-out events."""
    nll = -model.score_samples(test)
    frame = pd.DataFrame({"user": test[user_col].to_numpy(), "nll": nll}).dropna()
    return frame.groupby("user", sort=True)["nll"].mean()


def error_by_bin(errors, bins):
    """Mean over the users of each entropy bin of their errors.

    Parameters
    ----------
    errors : dict of str -> pandas.Series
        Per model, the per-user errors (indexed by user).
    bins : pandas.Series
        Per user, its entropy bin.

    Returns
    -------
    pandas.DataFrame
        One row per model, one column per bin (``bin 0`` = lowest entropy).
    """
    table = {}
    for name, user_errors in errors.items():
        in_bins = bins.reindex(user_errors.index)
        table[name] = user_errors.groupby(in_bins).mean()
    result = pd.DataFrame(table).T
    result.columns = [f"bin {int(c)}" for c in result.columns]
    return result


def markdown(frame, index=False):
    """A DataFrame as a Markdown table (floats with three decimals)."""
    if index:
        frame = frame.reset_index()
    lines = ["| " + " | ".join(str(c) for c in frame.columns) + " |",
             "| " + " | ".join("---" for _ in frame.columns) + " |"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(
            f"{v:.3f}" if isinstance(v, (float, np.floating)) else str(v)
            for v in row) + " |")
    return "\n".join(lines)


def write_table(frame, out_dir, name, index=False):
    frame.to_csv(Path(out_dir) / f"{name}.csv", index=index)
    (Path(out_dir) / f"{name}.md").write_text(markdown(frame, index=index) + "\n")


def plot_error_by_bin(table, path, title):
    """Grouped bars: error of each model in each entropy bin."""
    fig = Figure(figsize=(9, 4.5))
    ax = fig.subplots()
    n_models = len(table)
    width = 0.8 / max(n_models, 1)
    positions = np.arange(table.shape[1])
    for i, (name, row) in enumerate(table.iterrows()):
        ax.bar(positions + (i - (n_models - 1) / 2) * width, row.to_numpy(), width,
               label=name)
    ax.set_xticks(positions, [f"{c}\n{_bin_label(j, table.shape[1])}"
                              for j, c in enumerate(table.columns)])
    ax.set_ylabel("held-out error (nats, lower is better)")
    ax.set_title(title)
    # outside the axes: inside, it hides the bars of the last bin
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_learning_curves(histories, path, title):
    """Training and validation loss per epoch of each recurrent model."""
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for (name, history), color in zip(histories.items(), _colors()):
        frame = pd.DataFrame(history)
        ax.plot(frame["epoch"], frame["train_loss"], "--", color=color,
                label=f"{name} train")
        ax.plot(frame["epoch"], frame["valid_loss"], "-", color=color,
                label=f"{name} validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (nats per event)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _colors():
    return ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]


def _bin_label(index, n_bins):
    if index == 0:
        return "lowest entropy"
    return "highest entropy" if index == n_bins - 1 else "middle"
