"""Contrastive losses over GEM embeddings, shared by every InfoNCE term of the trainer.

``info_nce(a, b, temperature, dims=None, extra_negatives=None)``: symmetric InfoNCE where
row i of ``a`` and row i of ``b`` are a positive pair and every other row is a negative.
With ``dims`` (Matryoshka representation learning) it is the mean of the loss at the full
dimension and at each prefix dimension: the vectors are cut to their first ``d`` values
and L2-normalised again before the similarities, which is how ``GEMModel.encode(...,
dimensions=d)`` serves them.

``grad_cached(...)``: GradCache (Gao et al., 2021). The embeddings of a large batch are
computed chunk by chunk without a graph, the loss and its gradient with respect to the
embeddings are computed once, then each chunk is run again with a graph and that cached
gradient is pushed through it. The parameter gradients equal those of the plain
computation (up to float rounding) while only one chunk's activations are alive at a time.
Each chunk's RNG state is saved before its first pass and restored for the second, so
dropout draws the same masks in both passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..config import check_matryoshka_dims


def truncate(vectors: torch.Tensor, dims: int | None) -> torch.Tensor:
    """The first ``dims`` values of each row (all of them for None), L2-normalised."""
    if dims is not None:
        vectors = vectors[..., :dims]
    return F.normalize(vectors, dim=-1)


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: float,
    dims: Sequence[int] | None = None,
    extra_negatives: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    symmetric: bool = True,
) -> torch.Tensor:
    """InfoNCE of the pairs (a[i], b[i]); the Matryoshka mean over the full size and ``dims``.

    ``a`` and ``b`` are (n, hidden) embeddings, normalised or not (each size is normalised
    here). Row i of ``a`` is scored against every row of ``b`` and of ``extra_negatives``
    (m, hidden; hard negatives), its positive being b[i]. ``mask`` (n, n + m), True where a
    column is not a negative of that row (e.g. the same text as its positive), leaves those
    columns out of the row's softmax. ``symmetric`` also scores each b[i] against the rows
    of ``a`` (the negatives are not queries) and averages the two directions.
    ``dims`` None gives exactly the plain loss at the full size.
    """
    if a.dim() != 2 or b.shape != a.shape:
        raise ValueError(f"info_nce needs two (n, hidden) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    full = a.shape[-1]
    sizes: list[int | None] = [None]
    for d in check_matryoshka_dims(dims) or []:
        if d >= full:
            raise ValueError(f"matryoshka dimension {d} is not below the embedding size {full}")
        sizes.append(d)
    total = a.new_zeros((), dtype=torch.float32)
    for size in sizes:
        total = total + _info_nce_at(a, b, temperature, size, extra_negatives, mask, symmetric)
    return total / len(sizes)


def _info_nce_at(a, b, temperature, size, extra_negatives, mask, symmetric) -> torch.Tensor:
    a, b = truncate(a.float(), size), truncate(b.float(), size)
    candidates = b if extra_negatives is None else torch.cat([b, truncate(extra_negatives.float(), size)])
    target = torch.arange(a.shape[0], device=a.device)
    logits = a @ candidates.T / temperature
    if mask is not None:
        logits = logits.masked_fill(mask.to(logits.device), float("-inf"))
    loss = F.cross_entropy(logits, target)
    if not symmetric:
        return loss
    reverse = b @ a.T / temperature
    if mask is not None:
        reverse = reverse.masked_fill(mask[:, : a.shape[0]].T.to(reverse.device), float("-inf"))
    return 0.5 * (loss + F.cross_entropy(reverse, target))


def grad_cached(
    encode: Callable[[str, int, int], torch.Tensor],
    sides: Sequence[tuple[str, int]],
    chunk_size: int,
    loss_fn: Callable[..., torch.Tensor],
    backward: Callable[[torch.Tensor], None],
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Compute ``loss_fn`` over big batches of embeddings and backpropagate it, chunk by chunk.

    ``encode(side, start, end)`` embeds rows ``start:end`` of ``side`` (with a graph when
    grad is enabled); ``sides`` names each side and its row count; ``loss_fn(*embeddings)``
    takes one (rows, hidden) tensor per side, in order, and returns the scalar to
    backpropagate (weights and gradient-accumulation scaling included); ``backward(x)``
    runs the backward pass of a scalar (``accelerator.backward``, so mixed-precision loss
    scaling applies). Returns the loss, detached: its gradients are already accumulated.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    accelerator_devices = [device] if device.type == "cuda" else []
    spans = [(side, start, min(start + chunk_size, rows)) for side, rows in sides for start in range(0, rows, chunk_size)]

    states, pieces = [], {side: [] for side, _rows in sides}
    for side, start, end in spans:  # pass 1: embeddings only, no graph
        states.append(_rng_state(accelerator_devices))
        with torch.no_grad():
            pieces[side].append(encode(side, start, end).detach())
    leaves = [torch.cat(pieces[side]).requires_grad_(True) for side, _rows in sides]
    with torch.enable_grad():
        loss = loss_fn(*leaves)
    gradients = torch.autograd.grad(loss, leaves, allow_unused=True)
    cached = {side: grad for (side, _rows), grad in zip(sides, gradients)}

    for (side, start, end), state in zip(spans, states):  # pass 2: the same chunks with a graph
        gradient = cached[side]
        if gradient is None:
            continue
        with torch.random.fork_rng(devices=accelerator_devices, device_type=device.type if accelerator_devices else "cuda"):
            _set_rng_state(state, accelerator_devices)
            with torch.enable_grad():
                embedded = encode(side, start, end)
                backward((embedded.float() * gradient[start:end].to(embedded.device)).sum())
    return loss.detach()


def _rng_state(devices) -> tuple:
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]


def _set_rng_state(state, devices) -> None:
    cpu, accelerators = state
    torch.set_rng_state(cpu)
    for d, s in zip(devices, accelerators):
        torch.cuda.set_rng_state(s, d)
