"""Config: defaults and presets, TOML files, flag precedence, validation, saved config."""
from __future__ import annotations

import dataclasses

import pytest

from rnnkit.train import UserError, resolve
from rnnkit.train.config import PRESETS, Config, check_resumable, load_toml, to_toml


def test_defaults_are_the_sunspots_lstm():
    cfg = resolve({})
    assert (cfg.task, cfg.cell, cfg.k1) == ("sunspots", "lstm", 0)


def test_task_preset_applies_under_flags():
    assert resolve({"task": "digits"}).hidden == PRESETS["digits"]["hidden"]
    assert resolve({"task": "digits", "hidden": 7}).hidden == 7


def test_data_flag_implies_its_task(tmp_path):
    assert resolve({"text": str(tmp_path / "t.txt")}).task == "text"
    assert resolve({"csv": str(tmp_path / "s.csv"), "target": "x"}).task == "csv"


def test_flags_override_toml_which_overrides_presets(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('task = "digits"\n[model]\ncell = "gru"\nhidden = 12\n[train]\nlr = 1\n')
    cfg = resolve({"hidden": 5}, str(path))
    assert (cfg.task, cfg.cell, cfg.hidden, cfg.lr) == ("digits", "gru", 5, 1.0)
    assert cfg.epochs == PRESETS["digits"]["epochs"]


def test_saved_toml_reads_back_to_the_same_config_but_a_new_folder(tmp_path):
    cfg = resolve({"task": "copy", "cell": "jordan", "jordan_output": 3, "forget_bias": None,
                   "out": "somewhere"})
    path = tmp_path / "config.toml"
    path.write_text(to_toml(cfg))
    assert resolve({}, str(path)) == dataclasses.replace(cfg, out=None)


@pytest.mark.parametrize("text,fragment", [
    ("hidden = 'big'\n", "hidden: expected int"),
    ("hiden = 3\n", "unknown option 'hiden'"),
    ("cell = \n", "not valid TOML"),
])
def test_bad_toml_is_one_clear_error(text, fragment, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=fragment):
        load_toml(str(path))


@pytest.mark.parametrize("options,fragment", [
    ({"cell": "transformer"}, "cell: expected one of elman, jordan, lstm, gru"),
    ({"task": "imagenet"}, "task: expected one of"),
    ({"hidden": 0}, "hidden: expected a positive integer"),
    ({"lr": -1.0}, "lr: expected a positive number"),
    ({"dropout": 0.5}, "needs layers >= 2"),
    ({"cell": "gru", "forget_bias": 1.0}, "forget_bias: an option of the lstm cell only"),
    ({"cell": "lstm", "nonlinearity": "relu"}, "nonlinearity: an option of the elman/jordan cell only"),
    ({"cell": "lstm", "reset_after": False}, "reset_after: an option of the gru cell only"),
    ({"cell": "gru", "jordan_output": 3}, "jordan_output: an option of the jordan cell only"),
    ({"cell": "elman", "output_activation": "tanh"}, "output_activation: an option of the jordan cell only"),
    ({"optimizer": "adam", "momentum": 0.9}, "momentum: an sgd/rmsprop option"),
    ({"task": "digits", "csv": "x.csv"}, "--csv: goes with the csv task"),
    ({"task": "csv"}, "task csv: needs --csv FILE"),
    ({"target": "x"}, "--target: goes with --csv"),
    ({"k1": 10}, "truncated BPTT applies to the text task"),
    ({"text": "t.txt", "k1": 0}, "needs truncated BPTT"),
    ({"text": "t.txt", "k1": 10, "k2": 5}, "k2 >= k1"),
    ({"text": "t.txt", "bidirectional": True}, "cannot read ahead"),
    ({"clip": "sometimes"}, "clip: expected one of norm, value, none"),
])
def test_invalid_and_conflicting_options_are_rejected(options, fragment):
    with pytest.raises(UserError, match=fragment):
        resolve(options)


def test_resume_may_change_run_control_but_not_the_model():
    saved = resolve({})
    check_resumable(saved, dataclasses.replace(saved, epochs=5, progress=True))
    with pytest.raises(UserError, match="hidden is 64 here but 32 in the checkpoint"):
        check_resumable(saved, dataclasses.replace(saved, hidden=64))


def test_every_field_has_help():
    assert all(f.metadata.get("help") for f in dataclasses.fields(Config))
