"""The sequence machinery, written once for every cell and backend: small functions that compose.

Symbols: T steps, B batch, L layers, S_k the size of carried state k.

    longest_first(lengths)            -> the order that sorts a batch longest first, or None
    user_order(order, device)         -> the inverse order (None for None)
    batch_rows(t, order[, inverse])   t's batch rows (dim 1) in ``order``
    rows_to_run(x, order, lengths, m) x in the run's order with zeros on padded steps, differentiable
    rows_to_user(t, order, lengths, m) the inverse: back in the user's rows, zeros on padded steps
    unpacked(data, batch_sizes)       -> a PackedSequence's padded batch and lengths, differentiable
    packed_data(t, lengths, sizes)    -> t's valid rows as a PackedSequence's data, differentiable
    length_mask(lengths, T, device)   -> mask (T, B, 1) bool, rev (T, B, 1) index, or (None, None)
    reverse(t, rev)                   each sequence reversed within its own length (an involution)
    zero_padded(mask, t)              zeros on padded steps (zero_padded_: in place)
    keep(mask_t, new, old)            the state after a step: new inside the sequence, old on padding
    step_stack(cell, x, state0, ...)  one time step through a stack of layers (Python, differentiable)
    torch_ops_only()                  whether only torch's own ops may run (forward AD, torch.func, tracing)

A reverse direction is the forward machinery run on ``reverse(x, rev)`` with its outputs reversed
back (as flax's ``flip_sequences``): padding stays at the end, so the same masks serve both.
On the CPU the copies (batch_rows, rows_to_run, rows_to_user, unpacked, packed_data) go through the cpu
backend's kernels where they registered (use_cpu_empty, use_cpu_rows, use_cpu_packing): one pass
each, into its cache of buffers; elsewhere torch's ops.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.autograd.forward_ad as forward_ad
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .cells.base import Cell


def longest_first(lengths: Tensor) -> Optional[Tensor]:
    """The batch order (B,) that sorts ``lengths`` longest first (stable: ties keep their order),
    or None when they already are.  The layers run a batch in this order, as torch.nn's packed
    sequences do: a step's finished sequences are then its last rows, which the CPU kernels skip."""
    # on the host as a list: the batch's handful of tensor ops cost more than the values' walk
    vals = lengths.tolist()
    if all(a >= b for a, b in zip(vals, vals[1:])):
        return None
    return torch.tensor(sorted(range(len(vals)), key=vals.__getitem__, reverse=True), dtype=torch.long)


def user_order(order: Optional[Tensor], device) -> Optional[Tensor]:
    """The inverse of a batch order: rows run in ``order`` back to the user's (None for None)."""
    if order is None:
        return None
    return torch.argsort(order).to(device)                    # a permutation's sort is its inverse


# Where a CPU copy's buffer comes from: the C++ kernels' cache of large buffers (csrc/pool.h),
# registered by the cpu backend when its kernels load; None: torch's allocator.
_cpu_empty: Optional[Callable[[List[int], torch.dtype], Tensor]] = None


def use_cpu_empty(empty: Optional[Callable[[List[int], torch.dtype], Tensor]]) -> None:
    """Let ``batch_rows`` take its CPU outputs from ``empty(sizes, dtype)`` (None: torch's)."""
    global _cpu_empty
    _cpu_empty = empty


def _rows_into(t: Tensor, order: Tensor) -> Tensor:
    """t.index_select(1, order) into a buffer of ``_cpu_empty`` (CPU) or a new tensor."""
    if _cpu_empty is not None and t.device.type == "cpu":
        return torch.index_select(t, 1, order, out=_cpu_empty(list(t.shape), t.dtype))
    return t.index_select(1, order)


class _BatchRows(torch.autograd.Function):
    """A permutation of the batch rows; its gradient is the inverse permutation (not the scatter
    of index_select's backward into a zeroed tensor)."""

    @staticmethod
    def forward(ctx, t: Tensor, order: Tensor, back: Tensor) -> Tensor:
        ctx.save_for_backward(back)
        return _rows_into(t, order)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (back,) = ctx.saved_tensors
        return _rows_into(grad, back), None, None


def batch_rows(t: Tensor, order: Optional[Tensor], inverse: Optional[Tensor] = None) -> Tensor:
    """t (N, B, ...) with its batch rows in ``order`` (None: t itself; order a permutation);
    ``inverse``: order's inverse where the caller has it (the gradient's order), else computed.

    On CPU the copy goes into a buffer of the kernels' cache: a new multi-MiB tensor at every call
    faults its pages in again once glibc has handed a freed one back to the OS (measured, Elman
    (T, B, H) = (128, 32, 256) with lengths, forward: 10.7 ms with new tensors, 7.7 with the
    output's reordering into the cache, against 6.6 for the same batch without lengths)."""
    if order is None:
        return t
    if torch.compiler.is_compiling():
        return t.index_select(1, order)
    if torch.is_grad_enabled() and t.requires_grad:
        return _BatchRows.apply(t, order, user_order(order, order.device) if inverse is None else inverse)
    return _rows_into(t, order)


# The cpu backend's copies of a batch between the user's row order and the run's with zeros on
# padded steps, one pass each (rows_to_run, rows_to_user of its kernels), registered when they
# load; None: torch ops.
_cpu_rows: Optional[Tuple[Callable, Callable]] = None


def use_cpu_rows(to_run: Optional[Callable], to_user: Optional[Callable]) -> None:
    """Let ``rows_to_run`` copy CPU batches with ``to_run(x, order, lengths)`` and take their
    gradients back with ``to_user`` (None: torch's index_select and where)."""
    global _cpu_rows
    _cpu_rows = None if to_run is None or to_user is None else (to_run, to_user)


def torch_ops_only() -> bool:
    """Whether only torch's own ops may run the recurrence: under forward-mode AD (an open
    ``torch.autograd.forward_ad.dual_level``) inputs may carry tangents, and under a torch.func
    transform (grad, vjp, jacrev, jvp, vmap) they are functorch's wrapper tensors.  A backend's
    kernels read raw data and our hand-derived backward has no jvp and no batching rule: they
    would drop tangents silently or fail on the wrappers.  Under torch.jit.trace only torch's
    ops are recorded: a single step (model.step, the Cell modules) traces as torch's ops."""
    return getattr(forward_ad, "_current_level", -1) >= 0 or _functorch_active() or torch.jit.is_tracing()


def _functorch_active() -> bool:
    return torch._C._functorch.peek_interpreter_stack() is not None


def _kernel_copies(t: Tensor) -> bool:
    """Whether the cpu kernels' copies (registered, else None) may move t: a CPU tensor outside
    torch.compile and outside what needs torch's own ops (torch_ops_only: forward-mode AD,
    torch.func transforms, tracing), where these autograd Functions have no jvp or batching rule."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling() and not torch_ops_only()


class _Rows(torch.autograd.Function):
    """A batch into the run's row order with zeros on padded steps (back=False), or rows in the
    run's order back into the user's, zeros on padded steps (back=True): one pass.  Each is the
    other's adjoint, so the gradient is the other direction, itself differentiable again
    (create_graph)."""

    @staticmethod
    def forward(ctx, x: Tensor, order: Tensor, lengths: Tensor, back: bool) -> Tensor:
        ctx.save_for_backward(order, lengths)
        ctx.back = back
        return _cpu_rows[1 if back else 0](x, order, lengths)

    @staticmethod
    def backward(ctx, grad: Tensor):
        order, lengths = ctx.saved_tensors
        return _Rows.apply(grad, order, lengths, not ctx.back), None, None, None


def rows_to_run(x: Tensor, order: Optional[Tensor], lengths: Tensor, mask: Tensor) -> Tensor:
    """x (T, B, F) with its rows in the run's order (``order``; None: they are) and zeros on padded
    steps (the run's ``lengths``, non-increasing; ``mask`` their (T, B, 1) mask), differentiable:
    what ``zero_padded(mask, batch_rows(x, order))`` gives, in one pass on the CPU (measured at
    (T, B, H) = (128, 32, 256), two threads: index_select and torch.where with its backward took
    about 2 ms of an Elman training step of 25 with lengths)."""
    if not _rows_here(x):
        return zero_padded(mask, batch_rows(x, order))
    return _rows(x, order, lengths, False)


def rows_to_user(t: Tensor, order: Optional[Tensor], lengths: Tensor, mask: Tensor,
                 back: Optional[Tensor] = None) -> Tensor:
    """t (T, B, F) in the run's row order (``order``; None: the user's already) back in the user's
    rows with zeros on padded steps (the run's ``lengths`` and their (T, B, 1) ``mask``; ``back``
    order's inverse where the caller has it), differentiable: what ``batch_rows(zero_padded(mask,
    t), back)`` gives, in one pass on the CPU (``rows_to_run``'s inverse and adjoint).  A layer's
    output leaves the kernels with the carried state on padded steps and is zeroed here only: a
    clone and a fill fewer each way (training with lengths, Elman (T, B, H) = (128, 8, 128), two
    threads: 1.29-1.31x the full batch's time before, 1.16-1.18x after)."""
    if not _rows_here(t):
        if order is not None and back is None:
            back = user_order(order, t.device)
        return batch_rows(zero_padded(mask, t), back, order)
    return _rows(t, order, lengths, True)


def _rows_here(t: Tensor) -> bool:
    """Whether rows_to_run / rows_to_user take the kernels' one-pass copy for t."""
    return _cpu_rows is not None and t.dim() == 3 and t.dtype in (torch.float32, torch.float64) and _kernel_copies(t)


def _rows(t: Tensor, order: Optional[Tensor], lengths: Tensor, back: bool) -> Tensor:
    order = torch.arange(t.shape[1]) if order is None else order.to(torch.long)
    return _Rows.apply(t, order, lengths.to(torch.long), back)


# The cpu backend's copies between a PackedSequence's data and the padded (T, B, F) batch, one pass
# each (unpack_rows, pack_rows of its kernels), registered when they load; None: torch's.
_cpu_packing: Optional[Tuple[Callable, Callable]] = None


def use_cpu_packing(unpack: Optional[Callable], pack: Optional[Callable]) -> None:
    """Let ``unpacked`` and ``packed_data`` use ``unpack(data, batch_sizes)`` and ``pack(t,
    batch_sizes)`` on CPU tensors (None: torch's pad_packed_sequence and pack_padded_sequence)."""
    global _cpu_packing
    _cpu_packing = None if unpack is None or pack is None else (unpack, pack)


class _Unpacked(torch.autograd.Function):
    """A PackedSequence's data as its padded batch (zeros on padded steps); the gradient packed."""

    @staticmethod
    def forward(ctx, data: Tensor, batch_sizes: Tensor) -> Tuple[Tensor, Tensor]:
        ctx.save_for_backward(batch_sizes)
        x, lengths = _cpu_packing[0](data, batch_sizes)
        ctx.mark_non_differentiable(lengths)
        return x, lengths

    @staticmethod
    def backward(ctx, grad: Tensor, _):
        (batch_sizes,) = ctx.saved_tensors
        return _Packed.apply(grad, batch_sizes), None             # differentiable again (create_graph)


class _Packed(torch.autograd.Function):
    """A padded batch's valid rows as a PackedSequence's data; the gradient padded with zeros."""

    @staticmethod
    def forward(ctx, t: Tensor, batch_sizes: Tensor) -> Tensor:
        ctx.save_for_backward(batch_sizes)
        return _cpu_packing[1](t, batch_sizes)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (batch_sizes,) = ctx.saved_tensors
        return _Unpacked.apply(grad, batch_sizes)[0], None


def _packing_here(t: Tensor) -> bool:
    return _cpu_packing is not None and _kernel_copies(t)


def unpacked(data: Tensor, batch_sizes: Tensor) -> Tuple[Tensor, Tensor]:
    """(x (T, B, F) with zeros on padded steps, lengths (B,) int64) of a PackedSequence's data and
    batch sizes, rows longest first, differentiable: ``pad_packed_sequence``'s result, in one pass
    each way on the CPU (measured with torch's at (T, B, H) = (128, 32, 256), two threads: its
    pad_packed_sequence and pack_padded_sequence with their backwards took about 30 ms, more than
    an Elman training step)."""
    if not _packing_here(data) or data.dim() != 2:
        return pad_packed_sequence(PackedSequence(data, batch_sizes))
    return _Unpacked.apply(data, batch_sizes)


def packed_data(t: Tensor, lengths: Tensor, batch_sizes: Tensor) -> Tensor:
    """The valid rows of t (T, B, F) (rows longest first, ``lengths`` theirs) as the data of a
    PackedSequence with ``batch_sizes``, differentiable (``unpacked``'s inverse)."""
    if not _packing_here(t):
        return pack_padded_sequence(t, lengths, enforce_sorted=True).data
    return _Packed.apply(t, batch_sizes)


def length_mask(lengths: Optional[Tensor], T: int, device,
                reversal: bool = True) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """mask (T, B, 1) bool (True inside sequence b) and the reversal index (T, B, 1) for ``reverse``
    (None unless ``reversal``: only a backward direction needs it).

    (None, None) when there are no lengths or every sequence is full: the dense fast path.
    """
    if lengths is None or lengths.numel() == 0 or int(lengths.min()) == T:
        return None, None
    t = torch.arange(T).unsqueeze(1)                                    # (T, 1)
    inside = t < lengths                                                # (T, B)
    mask = inside.unsqueeze(-1).to(device)
    rev = torch.where(inside, lengths - 1 - t, t).unsqueeze(-1).to(device) if reversal else None
    return mask, rev


def reverse(t: Tensor, rev: Optional[Tensor]) -> Tensor:
    """(T, B, F) with every sequence reversed within its own length; padding stays in place."""
    if rev is None:
        return t.flip(0)
    return t.gather(0, rev.expand(-1, -1, t.shape[-1]))


def zero_padded(mask: Optional[Tensor], t: Tensor) -> Tensor:
    """t with zeros on padded steps (mask (T, B, 1) or (B, 1); None = nothing padded), a new tensor.

    On CPU where no graph is recorded: a copy with the padded rows filled (``zero_padded_``), about
    6x faster than ``torch.where`` with the mask broadcast over the features (0.11 against 0.63 ms
    at (128, 32, 256), one thread); under autograd, torch.compile (no data-dependent row count) or
    on another device (finding the rows would wait for it) ``torch.where``."""
    if mask is None:
        return t
    if (torch.is_grad_enabled() and t.requires_grad) or not _rows_fill(mask, t):
        return torch.where(mask, t, 0.0)
    return zero_padded_(mask, t.clone())


def zero_padded_(mask: Tensor, t: Tensor) -> Tensor:
    """``zero_padded`` in place, t returned: what the padded rows held (NaN included) is gone."""
    if not (_rows_fill(mask, t) and t.is_contiguous()):
        return t.masked_fill_(~mask, 0.0)
    rows = (~mask).reshape(-1).nonzero().squeeze(1)                    # the padded (step, row) pairs
    t.view(-1, t.shape[-1]).index_fill_(0, rows, 0.0)
    return t


def _rows_fill(mask: Tensor, t: Tensor) -> bool:
    """Whether the padded rows of t can be filled by index: a CPU tensor outside torch.compile, and
    mask (..., 1) with t's leading dims exactly (no broadcasting)."""
    return (t.device.type == "cpu" and not torch.compiler.is_compiling() and mask.dim() == t.dim()
            and mask.shape[:-1] == t.shape[:-1] and mask.shape[-1] == 1)


def keep(mask_t: Optional[Tensor], new: Tensor, old: Tensor) -> Tensor:
    """State after a step: the new one inside the sequence, the old one on padding."""
    return new if mask_t is None else torch.where(mask_t, new, old)


def step_stack(cell: Cell, x: Tensor, state0: Sequence[Tensor], layers: Sequence[Sequence[Optional[Tensor]]],
               dropout: float = 0.0, noisy: bool = False, one_node=None) -> Tuple[Tensor, Tuple[Tensor, ...]]:
    """One step of a stack of L layers (one direction) by the cell's Python step, or by
    ``one_node(x, state, layer)`` where given and it answers (a backend's step of one layer as one
    autograd node, ``ops.cell_step``; it takes no noise, so a noisy step never asks it).

    x (B, I); state0 per carried state k a (L, B, S_k) tensor; layers[l] = [w_ih, b_ih, *rec_params];
    ``dropout`` > 0 drops the inputs of layers 1..L-1 (training); ``noisy`` draws the cell's noise
    (recurrent dropout, zoneout) for each layer, in the order a forward over one step draws it
    (else the eval math: its expected values).  Returns the last layer's output (B, S_0) and the new
    states, each (L, B, S_k).  Differentiable when run under autograd.
    """
    new_states: List[Tuple[Tensor, ...]] = []
    for layer, (w_ih, b_ih, *rec) in enumerate(layers):
        if layer and dropout:
            x = F.dropout(x, dropout, training=True)
        state = tuple(s[layer] for s in state0)
        new = one_node(x, state, [w_ih, b_ih, *rec]) if one_node is not None and not noisy else None
        if new is None:
            noise = cell.draw_noise(1, x.shape[0], x) if noisy else None
            new, _ = cell.step(F.linear(x, w_ih, b_ih), state, tuple(rec),
                               None if noise is None else tuple(n[0] for n in noise), save=False)
        new_states.append(new)
        x = new[0]
    return x, stacked_states(new_states)


def stacked_states(new_states: Sequence[Tuple[Tensor, ...]]) -> Tuple[Tensor, ...]:
    """Per layer the new (B, S_k) states -> per state k an (L, B, S_k) tensor."""
    if len(new_states) == 1:                      # a view, not stack's copy: one autograd node less to run
        return tuple(s.unsqueeze(0) for s in new_states[0])
    return tuple(torch.stack([s[k] for s in new_states]) for k in range(len(new_states[0])))
