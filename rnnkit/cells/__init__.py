"""Cell math: one file per cell, forward and hand-derived backward step."""
from .base import Cell
from .elman import ElmanCell, NONLINEARITIES
from .gru import GRUCell
from .jordan import JordanCell, OUTPUT_ACTIVATIONS
from .lstm import LSTMCell

__all__ = ["Cell", "ElmanCell", "GRUCell", "JordanCell", "LSTMCell", "NONLINEARITIES",
           "OUTPUT_ACTIVATIONS"]
