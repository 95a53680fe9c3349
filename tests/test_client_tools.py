"""tools/clients/word_language_model.py without a pytorch/examples checkout: it skips cleanly,
rewrites exactly the lines it says it does, builds its corpus in their layout, parses their log.
With RNNKIT_EXAMPLES set to a checkout, one short real comparison runs too."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "clients" / "word_language_model.py"
spec = importlib.util.spec_from_file_location("word_language_model", SCRIPT)
wlm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wlm)

MODEL_PY = """import torch.nn as nn
class RNNModel(nn.Module):
    def __init__(self, rnn_type, nonlinearity):
        if rnn_type in ['LSTM', 'GRU']:
            self.rnn = getattr(nn, rnn_type)(4, 5, 2, dropout=0.1)
        else:
            self.rnn = nn.RNN(4, 5, 2, nonlinearity=nonlinearity, dropout=0.1)
        self.decoder = nn.Linear(5, 7)
"""


def test_skips_without_a_checkout():
    res = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.startswith("skipped:")


def test_substitution_swaps_only_the_recurrent_module():
    new = wlm.substitute(MODEL_PY)
    assert new.startswith("import rnnkit\n")
    assert "getattr(rnnkit, rnn_type)(4, 5, 2" in new and "self.rnn = rnnkit.RNN(4, 5, 2" in new
    assert "nn.Linear(5, 7)" in new and new.count("rnnkit") == 3            # import + the two swaps
    with pytest.raises(ValueError, match="model.py: expected one"):
        wlm.substitute(MODEL_PY.replace("self.rnn = nn.RNN(", "self.rnn = nn.LSTM("))


def test_corpus_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(wlm, "sentences", lambda: [["a", "b", "c", "d"], ["b", "c", "d", "e"]] * 10)
    monkeypatch.setattr(wlm, "VOCAB", 4)
    counts = wlm.make_corpus(tmp_path)
    lines = {p: (tmp_path / f"{p}.txt").read_text().splitlines() for p in ("train", "valid", "test")}
    assert {p: len(v) for p, v in lines.items()} == {"train": 16, "valid": 2, "test": 2}
    assert counts == {"train": 80, "valid": 10, "test": 10}              # words + <eos> per line
    assert {w for v in lines.values() for line in v for w in line.split()} == {"a", "b", "c", "d", "<unk>"}


def test_parse_log():
    log = ("| epoch   1 |    50/  215 batches | lr 20.00 | ms/batch 24.80 | loss  5.97 | ppl   390.16\n"
           "| epoch   1 |   100/  215 batches | lr 20.00 | ms/batch 24.80 | loss  5.49 | ppl   242.16\n"
           "| end of epoch   1 | time:  8.54s | valid loss  4.98 | valid ppl   144.86\n"
           "| End of training | test loss  4.97 | test ppl   144.55\n")
    got = wlm.parse_log(log)
    assert got["train_ppl"] == [[390.16, 242.16]] and got["valid_ppl"] == [144.86] and got["valid_loss"] == [4.98]
    assert got["test_ppl"] == 144.55 and got["epoch_s"] == [8.54]
    assert wlm.relative_gaps(got, got) == {"train_ppl": 0.0, "valid_ppl": 0.0, "test_ppl": 0.0}


@pytest.mark.skipif(not os.environ.get("RNNKIT_EXAMPLES"), reason="RNNKIT_EXAMPLES (a pytorch/examples checkout) not set")
def test_word_language_model_trains_to_torchs_curves():
    res = subprocess.run([sys.executable, str(SCRIPT), os.environ["RNNKIT_EXAMPLES"], "--models", "GRU",
                          "--epochs", "1", "--dtypes", "float64"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
