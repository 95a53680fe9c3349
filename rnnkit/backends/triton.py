"""GPU backend: persistent Triton kernels (rnnkit/backends/triton_kernels) behind the contract of base.py.

``forward`` and ``backward`` take and return exactly what the reference backend's do (same
shapes, the saved tensors in the cell's ``saved_names`` format, so ``cell.trace`` works
unchanged).  Each call is one kernel launch for the whole sequence of one layer and direction:
a program owns tiles of (batch rows x hidden units) with all their gates and exchanges only the
emitted state per step, through global memory and a grid barrier (at most one program per SM,
launched cooperatively where Triton can, so that the barrier cannot wait on a program that never
started).  Backward runs the cell's hand-derived equations in the same ownership, time reversed;
the recurrent weight gradients are single GEMMs after the loop.

Dtypes float32, bfloat16, float16 (and float64): states, cell memory and gradient carries are
kept and accumulated in float32 (float64 for float64), stored in the tensors' dtype; float32
matrix products follow ``torch.backends.cuda.matmul.allow_tf32``.  Block sizes depend on the
dtype and on how many tiles fit the SMs, never on T; B and H are runtime arguments, so a new T, B
or H within the same tile plan compiles nothing (Triton caches each variant on disk).

CPU tensors run in Triton's interpreter when ``TRITON_INTERPRET=1`` was set before Triton was
imported (correctness checks without a GPU: one program walks every tile, programs run in turn).
Cell options in the kernels: every one the cells have -- clip_recurrent, recurrent dropout and
zoneout (every cell; Jordan has no zoneout), LSTM peepholes and projection, layer normalisation of
the LSTM (with or without a projection) and the GRU's torch form (triton_kernels/layer_norm.py).
The masks come from the contract's ``noise`` (drawn once per forward; backward reads the same
ones).  ``step``/``stepper`` are the Python ones (one step of a stack is a handful of small products).
"""
from __future__ import annotations

import importlib
import os
from functools import lru_cache
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..cells.base import Cell, block_norm, block_norm_backward
from .base import YES, Support
from .reference import Reference

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
# The cells' options the kernels implement (anything else: the reference loop).
OPTIONS = {"elman": {"nonlinearity", "clip_recurrent", "recurrent_dropout", "zoneout"},
           "jordan": {"nonlinearity", "output_activation", "clip_recurrent", "recurrent_dropout"},
           "lstm": {"clip_recurrent", "peephole", "recurrent_dropout", "zoneout", "proj_size", "layer_norm"},
           "gru": {"reset_after", "clip_recurrent", "recurrent_dropout", "zoneout", "layer_norm"}}


@lru_cache(maxsize=None)
def _triton():
    """triton.language, or the import error as a string."""
    try:
        import triton.language as tl
        from .triton_kernels import common  # noqa: F401
    except Exception as e:                    # not installed, or no driver for this machine
        return f"{type(e).__name__}: {e}"
    return tl


def _kernel(cell: str, name: str):
    """A kernel of rnnkit/backends/triton_kernels/<cell>.py (imported on first use)."""
    return getattr(importlib.import_module(f"{__package__}.triton_kernels.{cell}"), name)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


class Plan:
    """How one launch is cut: block sizes, the number of programs and the constexprs shared by
    every kernel (chosen from B, H, dtype and device, never T)."""

    def __init__(self, B: int, widths: Tuple[int, ...], dtype: torch.dtype, device: torch.device):
        tl = _triton()
        self.interpret = device.type == "cpu"
        self.BB = 16 if (B <= 16 or self.interpret) else (32 if B <= 32 else 64)
        n_b = -(-B // self.BB)
        if self.interpret:                       # small tiles: several tiles per program, K loops
            self.BH, self.BK, self.programs = 16, 16, 1
        else:
            sms = _sm_count(device)
            width = max(widths)
            # the widest tile whose count still fits the SMs, but at most 2048 accumulators per gate
            # (4 gates x BB x BH in registers: wider spills); past that a program walks several tiles
            fits = [bh for bh in (16, 32, 64) if self.BB * bh <= 2048]
            self.BH = next((bh for bh in fits if n_b * -(-width // bh) <= sms), fits[-1])
            self.BK = 64 if dtype == torch.float32 else 128     # fewer, longer steps of the K loop
            self.programs = min(sms, n_b * -(-width // self.BH))
        self.consts = dict(BB=self.BB, BH=self.BH, BK=self.BK, PREC=self._precision(dtype),
                           ACC=tl.float64 if dtype == torch.float64 else tl.float32)
        self.acc_dtype = torch.float64 if dtype == torch.float64 else torch.float32

    def _precision(self, dtype: torch.dtype) -> str:
        """How tl.dot multiplies (common.dot): float32 follows torch's allow_tf32; bfloat16 in the
        interpreter goes through float32 (the interpreter's own bfloat16 products are wrong)."""
        if self.interpret:
            return "upcast" if dtype == torch.bfloat16 else "ieee"
        return "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"

    def launch(self, kernel, *args, **consts):
        """One persistent launch; the last runtime argument ``sem`` is added here."""
        sem = torch.zeros(1, dtype=torch.int32, device=args[0].device)
        grid = (self.programs,)
        if self.interpret:
            kernel[grid](*args[:-1], sem, *args[-1], **self.consts, **consts)
        else:
            _cooperative(kernel, grid, (*args[:-1], sem, *args[-1]), {**self.consts, **consts})


_COOPERATIVE = {"ok": True}


def _cooperative(kernel, grid, args, consts):
    """Launch with every program resident at once (the barrier needs it) where this Triton can:
    the cooperative launch fails instead of deadlocking when the grid cannot be co-resident."""
    if _COOPERATIVE["ok"]:
        try:
            kernel[grid](*args, **consts, num_warps=4, launch_cooperative_grid=True)
            return
        except (TypeError, KeyError) as e:       # an older Triton without the option
            if "cooperative" not in str(e):
                raise
            _COOPERATIVE["ok"] = False
    kernel[grid](*args, **consts, num_warps=4)


def _dummy(like: Tensor) -> Tensor:
    """A placeholder pointer for an argument the kernel does not read (its constexpr is off)."""
    return like


def _mask(mask: Optional[Tensor], like: Tensor) -> Tensor:
    return _dummy(like) if mask is None else mask.reshape(mask.shape[0], mask.shape[1]).to(torch.int8).contiguous()


def _carry(d: Optional[Tensor], like: Tensor, dtype: torch.dtype) -> Tensor:
    """A gradient carry (B, S) in the accumulation dtype, initialised from d (None: zeros)."""
    return torch.zeros(like.shape, dtype=dtype, device=like.device) if d is None else d.to(dtype).contiguous().clone()


def _prev_seq(state0: Tensor, states: Tensor) -> Tensor:
    """(T, B, S): the state entering every step."""
    return torch.cat([state0.unsqueeze(0), states[:-1]])


def _noise(cell: Cell, noise, like: Tensor):
    """(recurrent dropout mask (B, S_0) or None, zoneout's two z arguments, their constexprs) from the
    contract's noise (None: eval, zoneout by its probability)."""
    drop = noise[0][0].contiguous() if noise is not None and cell.recurrent_dropout else None
    if not cell.zoneout:
        return drop, (_dummy(like),) * 2, dict(ZONE=0)
    if noise is None:
        return None, (_dummy(like),) * 2, dict(ZONE=2)
    zs = noise[1:] if cell.recurrent_dropout else noise
    return drop, tuple(z.contiguous() for z in zs), dict(ZONE=1)


def _clip(cell: Cell):
    return dict(CLIP=cell.clip_recurrent is not None), (0.0 if cell.clip_recurrent is None else cell.clip_recurrent)


def _wgrad(d: Tensor, inp: Tensor) -> Tensor:
    """sum_t d_t^T inp_t: (T, B, N), (T, B, K) -> (N, K) in one GEMM."""
    return d.reshape(-1, d.shape[-1]).t().mm(inp.reshape(-1, inp.shape[-1]))


class Triton(Reference):
    name = "triton"

    def available(self) -> Support:
        found = _triton()
        if isinstance(found, str):
            return Support(False, f"Triton cannot be imported ({found})", unavailable=True)
        return YES

    def supports(self, cell: Cell, device, dtype) -> Support:
        device = torch.device(device)
        if device.type == "cpu" and not interpreting():
            return Support(False, "runs CUDA tensors (CPU tensors only in Triton's interpreter, TRITON_INTERPRET=1)")
        if device.type not in ("cpu", "cuda"):
            return Support(False, f"runs CUDA tensors, got device {device}")
        if dtype not in DTYPES:
            return Support(False, f"runs float32, bfloat16, float16 and float64, got {dtype}")
        if dtype == torch.float64 and device.type == "cuda":
            # measured on Triton 3.6 (H200): tl.dot does not compile for float64 operands
            return Support(False, "runs float64 only in Triton's interpreter (tl.dot has no float64 on the GPU)")
        known = OPTIONS.get(cell.name)
        if known is None:
            return Support(False, f"has no kernel for the {cell.name!r} cell")
        extra = sorted(set(cell.options()) - known)
        if extra:
            return Support(False, f"its {cell.name!r} kernel does not take {', '.join(extra)}")
        return self.available()

    def float32_state(self, dtype):
        return dtype in (torch.bfloat16, torch.float16)

    def forward(self, cell, xp, mask, state0, params, save=True, noise=None):
        return getattr(self, f"_{cell.name}_forward")(cell, xp.contiguous(), mask, state0, params, save, noise)

    def backward(self, cell, d_out, d_final, mask, state0, states, saved, params, noise=None):
        d_out = None if d_out is None else d_out.contiguous()
        return getattr(self, f"_{cell.name}_backward")(cell, d_out, d_final, mask, state0, states, saved, params,
                                                       noise)

    # -- LSTM -------------------------------------------------------------------------------------
    @staticmethod
    def _lstm_params(cell, params):
        """(W_hh, b_hh, W_hr or None, w_ch or None) in the cell's rec_params order."""
        w, b, *rest = params
        w_hr = rest.pop(0) if cell.proj_size else None
        return w, b, w_hr, (rest.pop(0) if cell.peephole else None)

    def _lstm_forward(self, cell, xp, mask, state0, params, save, noise):
        if cell.layer_norm:
            return self._lstm_ln_forward(cell, xp, mask, state0, params, save, noise)
        T, B, H4 = xp.shape
        H, P = H4 // 4, state0[0].shape[-1]
        w, b, wr, wc = self._lstm_params(cell, params)
        plan = Plan(B, (H, P), xp.dtype, xp.device)
        hs = _seq_with(state0[0], T)
        cs = xp.new_empty(T, B, H)
        h32, c32 = (s.to(plan.acc_dtype).contiguous().clone() for s in state0)
        gates = xp.new_empty(T, B, H4) if save else _dummy(xp)
        tanh_c = xp.new_empty(T, B, H) if save else _dummy(xp)
        ms = xp.new_empty(T, B, H) if wr is not None else _dummy(xp)
        drop, zones, zflags = _noise(cell, noise, xp)
        hd = _seq_with(state0[0] * drop, T) if drop is not None else _dummy(xp)
        computed = (xp.new_empty(T, B, P), xp.new_empty(T, B, H)) if save and cell.zoneout else (_dummy(xp),) * 2
        plan.launch(_kernel("lstm", "lstm_forward"), xp, hs, cs, h32, c32, gates, tanh_c, w.contiguous(),
                    _dummy(w) if b is None else b, _dummy(w) if wc is None else wc.contiguous(),
                    _dummy(w) if wr is None else wr.contiguous(), ms,
                    _dummy(xp) if drop is None else drop, hd, *zones, *computed, _mask(mask, xp),
                    (T, B, H, P, cell.zoneout), HAS_B=b is not None, HAS_MASK=mask is not None, SAVE=save,
                    PEEP=wc is not None, PROJ=wr is not None, DROP=drop is not None, **zflags)
        saved = (gates, tanh_c) + (computed if cell.zoneout else ())
        return (hs[1:], cs), (saved if save else ())

    def _lstm_backward(self, cell, d_out, d_final, mask, state0, states, saved, params, noise):
        if cell.layer_norm:
            return self._lstm_ln_backward(cell, d_out, d_final, mask, state0, states, saved, params, noise)
        w, b, wr, wc = self._lstm_params(cell, params)
        gates, tanh_c = saved[:2]
        T, B, H4 = gates.shape
        H, P = H4 // 4, state0[0].shape[-1]
        plan = Plan(B, (H, P), gates.dtype, gates.device)
        dh, dc = (_carry(d, s, plan.acc_dtype) for d, s in zip(d_final, state0))
        dp = gates.new_empty(T, B, H4)
        gh = gates.new_empty(T, B, P) if wr is not None else _dummy(dp)
        flags, bound = _clip(cell)
        drop, zones, zflags = _noise(cell, noise, gates)
        plan.launch(_kernel("lstm", "lstm_backward"), _dummy(dp) if d_out is None else d_out, dh, dc, dp,
                    gates.contiguous(), tanh_c.contiguous(), states[1].contiguous(), state0[1].contiguous(),
                    w.contiguous(), _dummy(w) if wc is None else wc.contiguous(),
                    _dummy(w) if wr is None else wr.contiguous(), gh,
                    _dummy(dp) if drop is None else drop, *zones, _mask(mask, dp), (T, B, H, P, bound, cell.zoneout),
                    HAS_DOUT=d_out is not None, HAS_MASK=mask is not None, PEEP=wc is not None,
                    PROJ=wr is not None, DROP=drop is not None, **flags, **zflags)
        h_prev = _prev_seq(state0[0], states[0])
        dw = _wgrad(dp, h_prev if drop is None else h_prev * drop)
        db = None if b is None else dp.sum((0, 1))
        d_params = (dw, db)
        if wr is not None:                          # dW_hr = sum_t gh_t^T m_t, m = o tanh(c)
            d_params += (_wgrad(gh, gates[..., 3 * H:] * tanh_c),)
        if wc is not None:                          # sum over steps and rows of dp_i c_{t-1}, dp_f c_{t-1}, dp_o c_t
            c_prev = _prev_seq(state0[1], states[1])
            c_new = saved[3] if cell.zoneout else states[1]
            dpi, dpf, _, dpo = dp.chunk(4, dim=-1)
            d_params += (torch.cat([(dpi * c_prev).sum((0, 1)), (dpf * c_prev).sum((0, 1)),
                                    (dpo * c_new).sum((0, 1))]),)
        return dp, (dh.to(gates.dtype), dc.to(gates.dtype)), d_params

    # -- layer-normalised LSTM (triton_kernels/layer_norm.py) ------------------------------------------
    def _lstm_ln_forward(self, cell, xp, mask, state0, params, save, noise):
        T, B, H4 = xp.shape
        H, P = H4 // 4, state0[0].shape[-1]
        w, b, wr, wc = self._lstm_params(cell, params)
        g_ih, g_hh, g_c, b_c = params[-4:]
        plan = Plan(B, (H, P), xp.dtype, xp.device)
        acc = plan.acc_dtype
        x_hat, x_rstd = (t.reshape(T, B, -1) for t in block_norm(xp.reshape(T * B, H4), 4))
        xn = g_ih * x_hat + (0.0 if b is None else b)                # the input side of every step at once
        hs = _seq_with(state0[0], T)
        cs = xp.new_empty(T, B, H)
        h32, c32 = (s.to(acc).contiguous().clone() for s in state0)
        rec, ct = xp.new_empty(T, B, H4, dtype=acc), xp.new_empty(T, B, H, dtype=acc)
        gates, tanh_c = xp.new_empty(T, B, H4), xp.new_empty(T, B, H)
        h_hat, h_rstd = xp.new_empty(T, B, H4), xp.new_empty(T, B, 4)
        ms = xp.new_empty(T, B, H) if wr is not None else _dummy(xp)
        drop, zones, zflags = _noise(cell, noise, xp)
        hd = _seq_with(state0[0] * drop, T) if drop is not None else _dummy(xp)
        computed = (xp.new_empty(T, B, P), xp.new_empty(T, B, H)) if save and cell.zoneout else (_dummy(xp),) * 2
        plan.launch(_kernel("layer_norm", "lstm_ln_forward"), xn.contiguous(), hs, cs, h32, c32, rec, ct, gates, tanh_c,
                    h_hat, h_rstd, w.contiguous(), g_hh.contiguous(), g_c.contiguous(),
                    _dummy(g_c) if b_c is None else b_c.contiguous(), _dummy(w) if wc is None else wc.contiguous(),
                    _dummy(w) if wr is None else wr.contiguous(), ms,
                    _dummy(xp) if drop is None else drop, hd, *zones, *computed, _mask(mask, xp),
                    (T, B, H, P, cell.zoneout), HAS_BC=b_c is not None, HAS_MASK=mask is not None, SAVE=save,
                    PEEP=wc is not None, PROJ=wr is not None, DROP=drop is not None, **zflags)
        saved = (gates, tanh_c, x_hat, x_rstd, h_hat, h_rstd) + (computed if cell.zoneout else ())
        return (hs[1:], cs), (saved if save else ())

    def _lstm_ln_backward(self, cell, d_out, d_final, mask, state0, states, saved, params, noise):
        w, b, wr, wc = self._lstm_params(cell, params)
        g_ih, g_hh, g_c, b_c = params[-4:]
        gates, tanh_c, x_hat, x_rstd, h_hat, h_rstd = saved[:6]
        T, B, H4 = gates.shape
        H, P = H4 // 4, state0[0].shape[-1]
        plan = Plan(B, (H, P), gates.dtype, gates.device)
        acc = plan.acc_dtype
        dh, dc = (_carry(d, s, acc) for d, s in zip(d_final, state0))
        dp, drec = gates.new_empty(T, B, H4), gates.new_empty(T, B, H4)
        e, dn = gates.new_empty(2, T, B, H, dtype=acc), gates.new_empty(T, B, H, dtype=acc)
        g_proj = gates.new_empty(T, B, P) if wr is not None else _dummy(dp)
        c_new = saved[7] if cell.zoneout else states[1]          # the cell each step computed
        flags, bound = _clip(cell)
        drop, zones, zflags = _noise(cell, noise, gates)
        plan.launch(_kernel("layer_norm", "lstm_ln_backward"), _dummy(dp) if d_out is None else d_out, dh, dc, dp, e,
                    dn, drec, gates.contiguous(), tanh_c.contiguous(), c_new.contiguous(), states[1].contiguous(),
                    state0[1].contiguous(), h_hat.contiguous(), h_rstd.contiguous(), w.contiguous(),
                    g_hh.contiguous(), g_c.contiguous(), _dummy(w) if wc is None else wc.contiguous(),
                    _dummy(w) if wr is None else wr.contiguous(), g_proj,
                    _dummy(dp) if drop is None else drop, *zones, _mask(mask, dp), (T, B, H, P, bound, cell.zoneout),
                    HAS_DOUT=d_out is not None, HAS_MASK=mask is not None, PEEP=wc is not None,
                    PROJ=wr is not None, DROP=drop is not None, **flags, **zflags)
        d_xp = block_norm_backward((dp * g_ih).reshape(T * B, H4), x_hat.reshape(T * B, H4),
                                   x_rstd.reshape(T * B, 4)).reshape(T, B, H4)
        h_prev = _prev_seq(state0[0], states[0])
        d_params = (_wgrad(drec, h_prev if drop is None else h_prev * drop), None if b is None else dp.sum((0, 1)))
        if wr is not None:                          # dW_hr = sum_t g_proj_t^T m_t, m = o tanh(g_c LN(c) + b_c)
            d_params += (_wgrad(g_proj, gates[..., 3 * H:] * tanh_c),)
        if wc is not None:
            c_prev = _prev_seq(state0[1], states[1])
            dpi, dpf, _, dpo = dp.chunk(4, dim=-1)
            d_params += (torch.cat([(dpi * c_prev).sum((0, 1)), (dpf * c_prev).sum((0, 1)),
                                    (dpo * c_new).sum((0, 1))]),)
        c_hat = block_norm(c_new.reshape(T * B, H), 1)[0].reshape(T, B, H)
        dn = dn.to(gates.dtype)
        d_params += ((dp * x_hat).sum((0, 1)), (dp * h_hat).sum((0, 1)), (dn * c_hat).sum((0, 1)),
                     None if b_c is None else dn.sum((0, 1)))
        return d_xp, (dh.to(gates.dtype), dc.to(gates.dtype)), d_params

    # -- Elman ------------------------------------------------------------------------------------
    def _elman_forward(self, cell, xp, mask, state0, params, save, noise):
        T, B, H = xp.shape
        w, b = params
        plan = Plan(B, (H,), xp.dtype, xp.device)
        hs = _seq_with(state0[0], T)
        h32 = state0[0].to(plan.acc_dtype).contiguous().clone()
        drop, zones, zflags = _noise(cell, noise, xp)
        hd = _seq_with(state0[0] * drop, T) if drop is not None else _dummy(xp)
        computed = xp.new_empty(T, B, H) if save and cell.zoneout else _dummy(xp)
        plan.launch(_kernel("elman", "elman_forward"), xp, hs, h32, w.contiguous(), _dummy(w) if b is None else b,
                    _dummy(xp) if drop is None else drop, hd, zones[0], computed, _mask(mask, xp),
                    (T, B, H, cell.zoneout), HAS_B=b is not None, HAS_MASK=mask is not None,
                    RELU=cell.nonlinearity == "relu", SAVE=save, DROP=drop is not None, **zflags)
        return (hs[1:],), ((computed,) if save and cell.zoneout else ())

    def _elman_backward(self, cell, d_out, d_final, mask, state0, states, saved, params, noise):
        w, b = params
        T, B, H = states[0].shape
        plan = Plan(B, (H,), w.dtype, w.device)
        dh = _carry(d_final[0], state0[0], plan.acc_dtype)
        da = states[0].new_empty(T, B, H)
        flags, bound = _clip(cell)
        drop, zones, zflags = _noise(cell, noise, da)
        computed = saved[0] if cell.zoneout else states[0]
        plan.launch(_kernel("elman", "elman_backward"), _dummy(da) if d_out is None else d_out, dh, da,
                    computed.contiguous(), w.contiguous(), _dummy(da) if drop is None else drop, zones[0],
                    _mask(mask, da), (T, B, H, bound, cell.zoneout), HAS_DOUT=d_out is not None,
                    HAS_MASK=mask is not None, RELU=cell.nonlinearity == "relu", DROP=drop is not None,
                    **flags, **zflags)
        h_prev = _prev_seq(state0[0], states[0])
        return da, (dh.to(w.dtype),), (_wgrad(da, h_prev if drop is None else h_prev * drop),
                                       None if b is None else da.sum((0, 1)))

    # -- GRU ---------------------------------------------------------------------------------------
    def _gru_forward(self, cell, xp, mask, state0, params, save, noise):
        if cell.layer_norm:
            return self._gru_ln_forward(cell, xp, mask, state0, params, save, noise)
        T, B, H3 = xp.shape
        H = H3 // 3
        w, b = params
        plan = Plan(B, (H,), xp.dtype, xp.device)
        hs = _seq_with(state0[0], T)
        h32 = state0[0].to(plan.acc_dtype).contiguous().clone()
        gates = xp.new_empty(T, B, H3) if save else _dummy(xp)
        drop, zones, zflags = _noise(cell, noise, xp)
        hd = _seq_with(state0[0] * drop, T) if drop is not None else _dummy(xp)
        computed = xp.new_empty(T, B, H) if save and cell.zoneout else _dummy(xp)
        common = (w.contiguous(), _dummy(w) if b is None else b, _dummy(xp) if drop is None else drop, hd,
                  zones[0], computed, _mask(mask, xp), (T, B, H, cell.zoneout))
        flags = dict(HAS_B=b is not None, HAS_MASK=mask is not None, SAVE=save, DROP=drop is not None, **zflags)
        extra = (computed,) if save and cell.zoneout else ()
        if cell.reset_after:
            hn = xp.new_empty(T, B, H) if save else _dummy(xp)
            plan.launch(_kernel("gru", "gru_forward"), xp, hs, h32, gates, hn, *common, **flags)
            return (hs[1:],), ((gates, hn) + extra if save else ())
        z32 = torch.empty_like(h32)
        u = xp.new_empty(T, B, H)
        plan.launch(_kernel("gru", "gru_forward_original"), xp, hs, h32, z32, u, gates, *common, **flags)
        return (hs[1:],), ((gates,) + extra if save else ())

    def _gru_backward(self, cell, d_out, d_final, mask, state0, states, saved, params, noise):
        if cell.layer_norm:
            return self._gru_ln_backward(cell, d_out, d_final, mask, state0, states, saved, params, noise)
        w, b = params
        gates = saved[0].contiguous()
        T, B, H3 = gates.shape
        H = H3 // 3
        plan = Plan(B, (H,), gates.dtype, gates.device)
        dh = _carry(d_final[0], state0[0], plan.acc_dtype)
        dx = gates.new_empty(T, B, H3)
        hp = _prev_seq(state0[0], states[0])
        drop, zones, zflags = _noise(cell, noise, gates)
        hd = hp if drop is None else hp * drop                    # h_{t-1} where it meets W_hh
        flags, bound = _clip(cell)
        flags.update(HAS_DOUT=d_out is not None, HAS_MASK=mask is not None, DROP=drop is not None, **zflags)
        d_out = _dummy(dx) if d_out is None else d_out
        tail = (w.contiguous(), _dummy(dx) if drop is None else drop, zones[0], _mask(mask, dx),
                (T, B, H, bound, cell.zoneout))
        if cell.reset_after:
            drec = gates.new_empty(T, B, H3)
            plan.launch(_kernel("gru", "gru_backward"), d_out, dh, dx, drec, gates, saved[1].contiguous(), hp,
                        *tail, **flags)
            dw = _wgrad(drec, hd)
            db = None if b is None else drec.sum((0, 1))
        else:
            plan.launch(_kernel("gru", "gru_backward_original"), d_out, dh, dx, gates, hp, *tail, **flags)
            dw = torch.cat([_wgrad(dx[..., :2 * H], hd), _wgrad(dx[..., 2 * H:], gates[..., :H] * hd)])
            db = None if b is None else dx.sum((0, 1))
        return dx, (dh.to(gates.dtype),), (dw, db)

    def _gru_ln_forward(self, cell, xp, mask, state0, params, save, noise):
        T, B, H3 = xp.shape
        H = H3 // 3
        w, b, g_ih, g_hh = params
        plan = Plan(B, (H,), xp.dtype, xp.device)
        x_hat, x_rstd = (t.reshape(T, B, -1) for t in block_norm(xp.reshape(T * B, H3), 3))
        hs = _seq_with(state0[0], T)
        h32 = state0[0].to(plan.acc_dtype).contiguous().clone()
        rec = xp.new_empty(T, B, H3, dtype=plan.acc_dtype)
        gates, hn, h_hat, h_rstd = xp.new_empty(T, B, H3), xp.new_empty(T, B, H), xp.new_empty(T, B, H3), \
            xp.new_empty(T, B, 3)
        drop, zones, zflags = _noise(cell, noise, xp)
        hd = _seq_with(state0[0] * drop, T) if drop is not None else _dummy(xp)
        computed = xp.new_empty(T, B, H) if save and cell.zoneout else _dummy(xp)
        plan.launch(_kernel("layer_norm", "gru_ln_forward"), (g_ih * x_hat).contiguous(), hs, h32, rec, gates, hn,
                    h_hat, h_rstd, w.contiguous(), g_hh.contiguous(), _dummy(w) if b is None else b,
                    _dummy(xp) if drop is None else drop, hd, zones[0], computed, _mask(mask, xp),
                    (T, B, H, cell.zoneout), HAS_B=b is not None, HAS_MASK=mask is not None, SAVE=save,
                    DROP=drop is not None, **zflags)
        saved = (gates, hn, x_hat, x_rstd, h_hat, h_rstd) + ((computed,) if cell.zoneout else ())
        return (hs[1:],), (saved if save else ())

    def _gru_ln_backward(self, cell, d_out, d_final, mask, state0, states, saved, params, noise):
        w, b, g_ih, g_hh = params
        gates, hn, x_hat, x_rstd, h_hat, h_rstd = saved[:6]
        T, B, H3 = gates.shape
        H = H3 // 3
        plan = Plan(B, (H,), gates.dtype, gates.device)
        dh = _carry(d_final[0], state0[0], plan.acc_dtype)
        dx, dhid, drec = (gates.new_empty(T, B, H3) for _ in range(3))
        hp = _prev_seq(state0[0], states[0])
        flags, bound = _clip(cell)
        drop, zones, zflags = _noise(cell, noise, gates)
        plan.launch(_kernel("layer_norm", "gru_ln_backward"), _dummy(dx) if d_out is None else d_out, dh, dx, dhid,
                    drec, gates.contiguous(), hn.contiguous(), hp, h_hat.contiguous(), h_rstd.contiguous(),
                    w.contiguous(), g_hh.contiguous(), _dummy(dx) if drop is None else drop, zones[0], _mask(mask, dx),
                    (T, B, H, bound, cell.zoneout), HAS_DOUT=d_out is not None, HAS_MASK=mask is not None,
                    DROP=drop is not None, **flags, **zflags)
        d_xp = block_norm_backward((dx * g_ih).reshape(T * B, H3), x_hat.reshape(T * B, H3),
                                   x_rstd.reshape(T * B, 3)).reshape(T, B, H3)
        d_params = (_wgrad(drec, hp if drop is None else hp * drop), None if b is None else dhid.sum((0, 1)),
                    (dx * x_hat).sum((0, 1)), (dhid * h_hat).sum((0, 1)))
        return d_xp, (dh.to(gates.dtype),), d_params

    # -- Jordan ------------------------------------------------------------------------------------
    def _jordan_plan(self, cell, B, dtype, device):
        plan = Plan(B, (cell.hidden_size, cell.output_size), dtype, device)
        softmax = cell.output_activation == "softmax"
        bo = max(16, 1 << (cell.output_size - 1).bit_length()) if softmax else plan.BH
        return plan, dict(BO=bo, RELU=cell.nonlinearity == "relu", OUT=JORDAN_OUT[cell.output_activation])

    def _jordan_forward(self, cell, xp, mask, state0, params, save, noise):
        T, B, H = xp.shape
        O = cell.output_size
        w_yh, w_hy, b = params
        plan, consts = self._jordan_plan(cell, B, xp.dtype, xp.device)
        ys = _seq_with(state0[0], T)
        y32 = state0[0].to(plan.acc_dtype).contiguous().clone()
        hid = xp.new_empty(T, B, H)
        drop = _noise(cell, noise, xp)[0]
        yd = _seq_with(state0[0] * drop, T) if drop is not None else _dummy(xp)
        plan.launch(_kernel("jordan", "jordan_forward"), xp, ys, y32, hid, w_yh.contiguous(), w_hy.contiguous(),
                    _dummy(w_hy) if b is None else b, _dummy(xp) if drop is None else drop, yd, _mask(mask, xp),
                    (T, B, H, O), HAS_B=b is not None, HAS_MASK=mask is not None, DROP=drop is not None, **consts)
        return (ys[1:],), ((hid,) if save else ())

    def _jordan_backward(self, cell, d_out, d_final, mask, state0, states, saved, params, noise):
        w_yh, w_hy, b = params
        hid = saved[0].contiguous()
        T, B, H = hid.shape
        O = cell.output_size
        plan, consts = self._jordan_plan(cell, B, hid.dtype, hid.device)
        dy = _carry(d_final[0], state0[0], plan.acc_dtype)
        dz = hid.new_empty(T, B, O)
        da = hid.new_empty(T, B, H)
        flags, bound = _clip(cell)
        drop = _noise(cell, noise, da)[0]
        plan.launch(_kernel("jordan", "jordan_backward"), _dummy(da) if d_out is None else d_out, dy, dz, da,
                    states[0].contiguous(), hid, w_yh.contiguous(), w_hy.contiguous(),
                    _dummy(da) if drop is None else drop, _mask(mask, da), (T, B, H, O, bound),
                    HAS_DOUT=d_out is not None, HAS_MASK=mask is not None, DROP=drop is not None, **flags, **consts)
        y_prev = _prev_seq(state0[0], states[0])
        d_params = (_wgrad(da, y_prev if drop is None else y_prev * drop), _wgrad(dz, hid),
                    None if b is None else dz.sum((0, 1)))
        return da, (dy.to(hid.dtype),), d_params


JORDAN_OUT = {"identity": 0, "tanh": 1, "sigmoid": 2, "softmax": 3}


def _seq_with(first: Tensor, T: int) -> Tensor:
    """(T+1, B, S): the exchange buffer of a state, [0] = the initial state."""
    seq = first.new_empty(T + 1, *first.shape)
    seq[0] = first
    return seq


BACKEND = Triton()
