"""An LSTM/GRU language model with an exchangeable output head, its training and its evaluation.

The model embeds word ids, runs a recurrent network and hands the hidden states to any
:class:`heads.OutputHead`. Training goes through :func:`training.fit`
with the hidden state carried across consecutive ``bptt`` windows (truncated backpropagation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from softmax_repro.data.text import lm_batches, num_lm_batches
from softmax_repro.engine.training import FitLog, TrainSpec, fit
from softmax_repro.methods.heads import OutputHead

State = Tensor | tuple[Tensor, Tensor] | None


def detach_state(state: State) -> State:
    """Cut the graph behind a recurrent state (LSTM ``(h, c)`` or GRU ``h``)."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


class RNNLanguageModel(nn.Module):
    """Embedding → LSTM/GRU → dropout → output head.

    Args:
        vocab: number of words ``V``.
        embed_dim: word embedding size.
        hidden: recurrent hidden size ``H`` (the head's input size).
        head: an output head over ``V`` words taking ``H``-dimensional inputs.
        layers: stacked recurrent layers.
        cell: ``lstm`` or ``gru``.
        dropout: dropout on embeddings and on the recurrent output.
    """

    def __init__(self, vocab: int, embed_dim: int, hidden: int, head: OutputHead,
                 layers: int = 1, cell: str = "lstm", dropout: float = 0.0) -> None:
        super().__init__()
        if cell not in ("lstm", "gru"):
            raise ValueError(f"cell={cell!r} is not allowed; choose 'lstm' or 'gru'")
        if head.vocab_size != vocab:
            raise ValueError(f"the head covers {head.vocab_size} words but vocab={vocab}")
        self.embedding = nn.Embedding(vocab, embed_dim)
        rnn_cls = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn_cls(embed_dim, hidden, num_layers=layers, batch_first=True,
                           dropout=dropout if layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.head = head

    def features(self, x: Tensor, state: State = None) -> tuple[Tensor, State]:
        """Hidden states ``[B, T, H]`` for inputs ``x[B, T]`` and the final recurrent state."""
        out, state = self.rnn(self.dropout(self.embedding(x)), state)
        return self.dropout(out), state

    def forward(self, x: Tensor, state: State = None) -> tuple[Tensor, State]:
        """Log-probabilities ``[B, T, V]`` of the next word after each input position."""
        h, state = self.features(x, state)
        b, t, _ = h.shape
        return self.head(h.reshape(b * t, -1)).view(b, t, -1), state

    def nll(self, x: Tensor, y: Tensor, state: State = None) -> tuple[Tensor, State]:
        """Per-token negative log-likelihood (nats) ``[B, T]`` of targets ``y`` given ``x``."""
        h, state = self.features(x, state)
        b, t, _ = h.shape
        return self.head.nll(h.reshape(b * t, -1), y.reshape(-1)).view(b, t), state


def train_lm(model: RNNLanguageModel, train: Tensor, bptt: int, spec: TrainSpec, *,
             before_step: Callable[[int], None] | None = None, desc: str | None = None) -> FitLog:
    """Train ``model`` on ``train[B, L]`` (from :func:`batchify`) with truncated BPTT.

    The hidden state flows from each window to the next and restarts at every epoch.
    ``before_step(step)`` is called before every optimizer step (e.g. KerBS reallocation).
    """
    state: list[State] = [None]
    step = [0]

    def make_batches(epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        state[0] = None
        return lm_batches(train, bptt)

    def compute_loss(net: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        if before_step is not None:
            before_step(step[0])
        step[0] += 1
        x, y = batch
        nll, new_state = net.nll(x, y, state[0])
        state[0] = detach_state(new_state)
        return nll.mean()

    return fit(model, compute_loss, make_batches, spec,
               steps_per_epoch=num_lm_batches(train, bptt), desc=desc)


@torch.no_grad()
def evaluate_nll(model: RNNLanguageModel, data: Tensor, bptt: int) -> Tensor:
    """Per-token NLL (nats) ``[B, L - 1]`` of ``data[B, L]``, target ``data[:, 1:]``, eval mode."""
    was_training = model.training
    model.eval()
    state: State = None
    chunks = []
    for x, y in lm_batches(data, bptt):
        nll, state = model.nll(x, y, state)
        chunks.append(nll)
    model.train(was_training)
    return torch.cat(chunks, dim=1)


def perplexity(nll: Tensor) -> float:
    """``exp(mean NLL)`` of per-token NLLs in nats."""
    return math.exp(float(nll.double().mean()))
