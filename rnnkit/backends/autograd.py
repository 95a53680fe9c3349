"""Autograd backend: the reference backend's Python loop differentiated by autograd itself.

The readable oracle the tests compare every hand-derived backward against: its forward records
the graph of the cell's ``step`` at every step, so it needs no ``backward`` of its own.
"""
from __future__ import annotations

from .reference import Reference


class Autograd(Reference):
    name = "autograd"
    differentiable = True

    def backward(self, cell, d_out, d_final, mask, state0, states, saved, params, noise=None):
        raise RuntimeError("the 'autograd' backend is differentiated by autograd; it has no backward")


BACKEND = Autograd()
