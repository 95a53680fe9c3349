"""Triton kernels of the ``triton`` backend (rnnkit/backends/triton.py), one module per cell.

Every kernel is *persistent*: one launch runs the whole sequence of one layer and direction.
A program owns tiles of (batch rows x hidden units) with all their gates, so the gate math stays
in the program and only the emitted state is exchanged between steps, through global memory and
one grid barrier (``common.grid_sync``).  The grid is at most one program per SM (the driver
launches it cooperatively where Triton can), and a program walks every tile ``s`` with
``s % programs == pid``; with one program (Triton's interpreter, which runs programs one after
another) that program walks all tiles and the barrier is trivially passed.

Importing this package imports Triton: only the driver does, and only when the backend runs.
"""
