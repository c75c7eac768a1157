"""Checks for the MEMIT exercises (``exercises/03_memit_exercises.ipynb``).

``check_batched_update(fn)``: ΔW = R Kᵀ (λC + KKᵀ)⁻¹ for a batch of keys; ``check_spread(fn)``: the
residual written one layer at a time from the lowest, each layer taking (what is left) / (layers
left), re-reading the states after each write. Both run on small random tensors (no model), print
``✓ passed`` or a hint naming the likely mistake, and never raise because of what ``fn`` returns
(errors raised inside ``fn`` propagate unchanged).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..memit import least_squares_update
from .verdict import failed as _failed, passed as _passed


def _spd(d: int, g: torch.Generator) -> torch.Tensor:
    a = torch.randn(d, 3 * d, generator=g, dtype=torch.float64)
    return a @ a.T / (3 * d) + 0.05 * torch.eye(d, dtype=torch.float64)


def _as_matrix(value, shape) -> torch.Tensor | str:
    """``value`` as a float64 tensor of ``shape``, or the hint that explains why it is not one."""
    if not isinstance(value, torch.Tensor):
        return f"fn returned {type(value).__name__}, not a tensor."
    if tuple(value.shape) == tuple(reversed(shape)) and shape[0] != shape[1]:
        return (f"ΔW has shape {tuple(value.shape)}; it maps a key (d_in = {shape[1]}) to an output "
                f"(d_out = {shape[0]}), so it is [d_out, d_in]: transpose it.")
    if tuple(value.shape) != tuple(shape):
        return f"ΔW has shape {tuple(value.shape)}, expected {tuple(shape)} = [d_out, d_in]."
    return value.detach().double().cpu()


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool((a - b).norm() <= 1e-6 * max(1.0, float(b.norm())))


def check_batched_update(fn: Callable) -> None:
    """``fn(keys [n, d_in], residuals [n, d_out], C [d_in, d_in], lam) -> ΔW [d_out, d_in]`` with
    ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹, K = keysᵀ, R = residualsᵀ."""
    _check_batched_update(fn)


def _check_batched_update(fn: Callable) -> bool:
    g = torch.Generator().manual_seed(0)
    for n, d_in, d_out, lam in ((5, 12, 7, 3.0), (1, 12, 7, 0.5), (20, 12, 7, 40.0)):
        keys = torch.randn(n, d_in, generator=g, dtype=torch.float64)
        res = torch.randn(n, d_out, generator=g, dtype=torch.float64)
        cov = _spd(d_in, g)
        got = _as_matrix(fn(keys.clone(), res.clone(), cov.clone(), lam), (d_out, d_in))
        if isinstance(got, str):
            return _failed(got)
        want = least_squares_update(keys, res, cov, lam)
        if _close(got, want):
            continue
        k, r = keys.T, res.T
        u = torch.linalg.solve(cov, k)  # C⁻¹K
        variants = {
            "λ is missing: the old keys' term is λ·C, not C.": least_squares_update(keys, res, cov, 1.0),
            "C is missing: the old keys weigh as λ·C (C = E[kkᵀ]), not λ·I.":
                least_squares_update(keys, res, None, lam),
            "the new keys' own term K Kᵀ is missing: solve (λC + KKᵀ), not λC alone.":
                r @ torch.linalg.solve(lam * cov, k).T,
            "this is ROME's rank-one update per fact, summed: the facts must be solved together "
            "(one linear system with every key), or each update spoils the others.":
                sum(torch.outer(r[:, i], u[:, i]) / (k[:, i] @ u[:, i]) for i in range(n)),
            "λ multiplies K Kᵀ instead of C.": r @ torch.linalg.solve(cov + lam * k @ k.T, k).T,
        }
        for hint, wrong in variants.items():
            if _close(got, wrong):
                return _failed(hint)
        lhs = got @ (lam * cov + k @ k.T)
        return _failed(f"ΔW does not solve ΔW (λC + KKᵀ) = R Kᵀ (n = {n} facts; off by "
                       f"{float((lhs - r @ k.T).norm() / (r @ k.T).norm()):.2g} relative).")
    return _passed()


class _Network:
    """A stand-in for the layers of a model: the states at the top layer are h₀ plus what each
    layer wrote, carried up through the layers above it (A_i; the top layer writes directly)."""

    def __init__(self, n: int, d: int, n_layers: int, g: torch.Generator):
        self.h0 = torch.randn(n, d, generator=g, dtype=torch.float64)
        self.carry = [torch.eye(d, dtype=torch.float64) + 0.3 * torch.randn(d, d, generator=g,
                                                                             dtype=torch.float64)
                      for _ in range(n_layers - 1)] + [torch.eye(d, dtype=torch.float64)]
        self.written: list[tuple[int, torch.Tensor]] = []

    def read_states(self) -> torch.Tensor:
        out = self.h0.clone()
        for layer, residual in self.written:
            out += residual @ self.carry[layer].T
        return out

    def write_layer(self, layer: int, residual) -> None:
        if not isinstance(residual, torch.Tensor) or residual.shape != self.h0.shape:
            raise ValueError(f"write_layer({layer}, residual) needs a tensor of shape "
                             f"{tuple(self.h0.shape)} (one row per fact).")
        self.written.append((int(layer), residual.detach().double().clone()))


def _reference(z, read_states, write_layer, n_layers, *, reread=True, share="left", sign=1.0):
    states = read_states()
    for i in range(n_layers):
        if reread:
            states = read_states()
        left = {"left": n_layers - i, "all": n_layers, "whole": 1}[share]
        write_layer(i, sign * (z - states) / left)


_SPREAD_MISTAKES = {
    "the residual points the wrong way: it is z − (current states).": {"sign": -1.0},
    "read the states again after each layer's write: the layers above change how a write arrives "
    "at the top, so what is left must be measured, not assumed.": {"reread": False},
    "each layer divided by L: divide by the layers left, L − i, so that the last layer takes all "
    "that is left.": {"share": "all"},
    "each layer took the whole residual: layer i takes 1/(L − i) of what is left, the lowest 1/L.":
        {"share": "whole"},
}


def _writes(kwargs: dict | None, z, n, d, n_layers, fn=None):
    net = _Network(n, d, n_layers, torch.Generator().manual_seed(1))
    (fn or (lambda *a: _reference(*a, **kwargs)))(z.clone(), net.read_states, net.write_layer, n_layers)
    return net


def _check_spread(fn: Callable) -> bool:
    n, d, n_layers = 4, 6, 3
    net = _Network(n, d, n_layers, torch.Generator().manual_seed(1))
    z = net.h0 + torch.randn(n, d, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    try:
        net = _writes(None, z, n, d, n_layers, fn)
    except ValueError as error:
        if "write_layer" in str(error):
            return _failed(str(error))
        raise
    layers = [layer for layer, _ in net.written]
    if layers != list(range(n_layers)):
        return _failed(f"the layers were written in the order {layers}; write each layer once, "
                       f"from the lowest: {list(range(n_layers))}.")
    same = lambda a, b: all(_close(x[1], y[1]) for x, y in zip(a.written, b.written))  # noqa: E731
    if same(net, _writes({}, z, n, d, n_layers)) and _close(net.read_states(), z):
        return _passed()
    for hint, kwargs in _SPREAD_MISTAKES.items():
        if same(net, _writes(kwargs, z, n, d, n_layers)):
            return _failed(hint)
    return _failed("layer i (0-based) writes (z − read_states()) / (L − i), reading the states "
                   "just before its write; afterwards the states are z.")


def check_spread(fn: Callable) -> None:
    """``fn(z, read_states, write_layer, n_layers) -> None``: for i = 0 … L−1, read the current
    states, write (z − states) / (L − i) into layer i. Afterwards the states equal z."""
    _check_spread(fn)


__all__ = ["check_batched_update", "check_spread"]
