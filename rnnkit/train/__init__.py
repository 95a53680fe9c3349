"""Training and using recurrent networks: the library under ``rnnkit train/eval/predict/generate``.

    from rnnkit.train import Config, resolve, train
    result = train(resolve({"task": "digits", "cell": "gru", "epochs": 5}))
    result["test"]["test"]["accuracy"]
"""
from .config import Config, resolve
from .errors import Diverged, Interrupted, UserError
from .infer import evaluate, generate, predict
from .loop import train
from .runfolder import config_for

__all__ = ["Config", "resolve", "config_for", "train", "evaluate", "predict", "generate",
           "UserError", "Interrupted", "Diverged"]
