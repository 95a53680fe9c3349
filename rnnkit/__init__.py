"""rnnkit: the recurrent network family (Elman, Jordan, LSTM, GRU) on PyTorch, with hand-derived BPTT."""
from ._version import __version__
from .cell_modules import ElmanCell, GRUCell, JordanCell, LSTMCell, RNNCell
from .convert import from_torch, to_torch
from .diagnostics import GradientFlow, gradient_flow, spectral_radius
from .export import export_onnx
from .layers import GRU, LSTM, RNN, Elman, Jordan, Trace
from .stream import Stream


__all__ = ["Elman", "RNN", "Jordan", "LSTM", "GRU", "ElmanCell", "RNNCell", "JordanCell", "LSTMCell", "GRUCell",
           "Trace", "Stream", "from_torch", "to_torch",
           "GradientFlow", "gradient_flow", "spectral_radius", "export_onnx"]
