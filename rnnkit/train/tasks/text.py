"""The character-level language model on a user's text file."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import data
from ..config import Config
from ..errors import UserError
from .base import LN2, Task, stat


class Text(Task):
    """Character-level language model on a text file: predict each next character.

    The text is cut into 90% train, 5% validation, 5% test (in that order).  Training reads
    the train part as ``batch_size`` parallel streams and uses truncated BPTT with the state
    carried across chunks (``step.StreamSteps``).  Loss: cross-entropy; metric: bits per
    character (loss / ln 2).
    """

    name, readout, metric, stream = "text", "all", "bpc", True
    predict_hint = "use rnnkit generate"

    def __init__(self, cfg: Config, stats: Optional[dict] = None):
        text = data.read_text(cfg.text)
        if stats is not None:                       # the vocabulary a checkpoint was trained with
            self.load_stats(stats)
            unknown = sorted(set(text) - set(self.vocab))
            if unknown:
                raise UserError(f"--text {cfg.text}: characters {''.join(unknown[:20])!r} are not "
                                f"in the model's vocabulary")
        else:
            self._set_vocab(sorted(set(text)))
        self.chunk = max(cfg.k1, cfg.k2)
        lookup = {ch: i for i, ch in enumerate(self.vocab)}
        ids = torch.tensor([lookup[ch] for ch in text], dtype=torch.long)
        n = len(ids)
        a, b = int(n * 0.9), int(n * 0.95)
        need = cfg.batch_size * (cfg.k1 + 1)
        if a < need or b - a < 2 or n - b < 2:
            raise UserError(f"--text {cfg.text}: {n} characters are too few for batch_size "
                            f"{cfg.batch_size} streams of k1={cfg.k1} steps (the 90% training part "
                            f"needs at least {need}; validation and test at least 2 each)")
        self.train_ids, self.val_ids, self.test_ids = ids[:a], ids[a:b], ids[b:]
        self.val = None
        self.tests = {}

    def _set_vocab(self, vocab) -> None:
        self.vocab = list(vocab)
        self.tokens = self.n_out = len(self.vocab)

    def streams(self, ids: Tensor, n_streams: int) -> Tuple[Tensor, Tensor]:
        """Cut ids into n_streams rows: inputs (S, L), next-character targets (S, L)."""
        L = (len(ids) - 1) // n_streams
        x = ids[:n_streams * L].view(n_streams, L)
        y = ids[1:n_streams * L + 1].view(n_streams, L)
        return x, y

    def stats(self):
        return {"vocab": "".join(self.vocab)}

    def load_stats(self, stats):
        vocab = stat(stats, "vocab", str)
        if not vocab or len(set(vocab)) != len(vocab):
            raise UserError("stats: vocab: expected 1 or more distinct characters")
        self._set_vocab(vocab)

    def steps(self):
        return self.chunk

    def loss_label(self):
        return "bits per character", 1 / LN2

    def describe(self):
        return (f"text: {len(self.train_ids) + len(self.val_ids) + len(self.test_ids)} characters, "
                f"{len(self.vocab)} symbols")
