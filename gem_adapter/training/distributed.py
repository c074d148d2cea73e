"""In-batch negatives across data-parallel processes: gather the embeddings, keep the local graph.

With P processes, each process's batch is 1/P of the global batch. The contrastive and pairs
terms then score the *global* batch on every process: ``gather_rows`` concatenates every
process's rows in rank order, the local rows being the local tensor itself (so autograd
reaches them) and the others copies without a graph. Each process computes the same loss L,
the one a single process with the global batch computes.

The gradient scale, worked: on process p autograd reaches only p's rows, so p's parameter
gradient is g_p, the share of dL/dtheta that flows through its own embeddings; the shares sum
to dL/dtheta. ``GEMTrainer`` averages gradients over processes (it divides the sum by P,
since its loss bypasses the DDP wrapper), so every process multiplies its share by P:
(1/P) * sum_p P * g_p = dL/dtheta, the single-process gradient. ``scale_gradient`` does that
on the loss's way back and leaves its value alone, so logged losses equal one process's too.
``gathered_loss(loss, *local)`` is the two together. Under GradCache the first pass calls it
on the cached local embeddings: the gathers run there, and the gradient cached for the local
rows is already scaled, so the second pass pushes the right one through each chunk.

Why the whole matrix on every process rather than each process scoring its own anchors:
a process's own anchors give the wrong gradient unless the gather's backward also sums every
process's gradient for each row (a collective inside every backward pass, GradCache's
included). The whole matrix needs no communication on the way back; each process computes
all (rows x rows) similarities, which is cheap: 256 rows of 576 values take ~0.5 GFLOP per
Matryoshka size, forward and back, against ~8 TFLOP for the decoder passes of those 256 texts
(135M parameters, ~40 tokens each: 6 x 135e6 x 10,240).

What this does not do: it does not gather hidden states or anything else with a sequence
dimension, and it does not average gradients (``GEMTrainer._average_gradients`` does).
"""

from __future__ import annotations

import atexit
from collections.abc import Callable

import torch
import torch.distributed as dist


def world_size() -> int:
    """Processes in the default process group; 1 when torch.distributed is not initialised."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_rows(local: torch.Tensor) -> torch.Tensor:
    """Every process's rows of ``local``, concatenated in rank order; only the local rows keep a graph.

    Row counts may differ between processes (e.g. hard negatives); the other dimensions and
    the dtype must not. Every process must call it, in the same order. One process: ``local``.
    """
    processes = world_size()
    if processes == 1:
        return local
    count = torch.tensor([local.shape[0]], dtype=torch.long, device=local.device)
    counts = [torch.zeros_like(count) for _ in range(processes)]
    dist.all_gather(counts, count)
    rows = [int(c) for c in counts]
    most = max(rows)
    if most == 0:  # empty everywhere
        return local
    padded = local.detach()
    if padded.shape[0] < most:  # all_gather needs one shape on every process
        padded = torch.cat([padded, padded.new_zeros((most - padded.shape[0], *padded.shape[1:]))])
    pieces = [torch.empty_like(padded) for _ in range(processes)]
    dist.all_gather(pieces, padded.contiguous())
    pieces = [piece[:n] for piece, n in zip(pieces, rows)]
    pieces[dist.get_rank()] = local
    return torch.cat(pieces)


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return value.view_as(value)

    @staticmethod
    def backward(ctx, gradient: torch.Tensor):
        return gradient * ctx.factor, None


def scale_gradient(value: torch.Tensor, factor: float) -> torch.Tensor:
    """``value`` unchanged, its gradient multiplied by ``factor`` on the way back."""
    return value if factor == 1 else _ScaleGradient.apply(value, factor)


def gathered_loss(loss: Callable[..., torch.Tensor], *local: torch.Tensor) -> torch.Tensor:
    """``loss`` of every process's rows of each ``local`` tensor, its gradient scaled by the process count.

    Every process gets the loss one process would compute over the global batch; averaged over
    processes, the gradients are that process's (see the module docstring). One process: ``loss(*local)``.
    """
    return scale_gradient(loss(*[gather_rows(tensor) for tensor in local]), world_size())


def release_at_exit() -> None:
    """Destroy the default process group when the interpreter exits, once, if one is initialised.

    Left to C++ teardown after Python has finalised, gloo's threads can abort a process that has
    finished its work ("terminate called without an active exception", seen on a CI run of the
    two-process test), and the launcher then reports the whole job failed.
    """
    if world_size() > 1 and not getattr(release_at_exit, "registered", False):
        release_at_exit.registered = True
        atexit.register(_destroy_process_group)


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
