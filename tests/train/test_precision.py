"""--precision fp32|bf16|fp16: autocast of the training forward, float32 weights and checkpoints
(a run resumes at another precision and on another device), the GradScaler for fp16 on CUDA
only, and the errors that name the flag."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import rnnkit
from rnnkit.train import Interrupted, UserError, config_for, resolve, train
from rnnkit.train import checkpoint as ck
from rnnkit.train import step as stepmod
from rnnkit.train.distributed import Dist
from rnnkit.train.loop import Trainer

from train_helpers import run_cli

CPU_FP16 = stepmod.autocast_works("cpu", torch.float16)
needs_cpu_fp16 = pytest.mark.skipif(not CPU_FP16, reason="this torch has no float16 autocast on the CPU")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _dtypes(path) -> dict:
    """Each checkpoint tensor's dtype as the file's header gives it (F32, U8, ...)."""
    with safe_open(str(path / ck.NAME), framework="pt") as f:
        return {k: f.get_slice(k).get_dtype() for k in f.keys()}


def _float32_state(path) -> None:
    """Weights, best weights and carried state are float32 in the checkpoint."""
    kinds = {k: v for k, v in _dtypes(path).items() if k.startswith(("model.", "best.", "carry."))}
    assert kinds and set(kinds.values()) == {"F32"}


def _losses(path) -> list:
    lines = (path / "metrics.jsonl").read_text().splitlines()
    return [r["train_loss"] for r in map(json.loads, lines) if r["kind"] == "epoch"]


# -- the choice and the decision ---------------------------------------------------------------
def test_precision_defaults_to_fp32_and_a_bad_value_names_the_flag(in_tmp, capsys):
    assert resolve({}).precision == "fp32"
    with pytest.raises(UserError, match=r"precision: expected one of fp32, bf16, fp16; got 'fp8'"):
        resolve({"precision": "fp8"})
    code, out, err = run_cli(["train", "--precision", "fp8", "--no-plots", "--no-progress"], capsys)
    assert code == 2 and out == "" and "precision" in err and "'fp8'" in err and "Traceback" not in err
    assert list(in_tmp.iterdir()) == []


@pytest.mark.parametrize("precision, device, scaled", [
    ("fp16", "cuda", True), ("fp16", "cpu", False), ("bf16", "cuda", False), ("bf16", "cpu", False),
    ("fp32", "cuda", False), ("fp32", "cpu", False)])
def test_grad_scaler_only_for_fp16_on_cuda(precision, device, scaled):
    assert stepmod.uses_scaler(precision, device) is scaled


def test_cpu_runs_never_scale_the_loss(tiny):
    for precision in ("fp32", "bf16") + (("fp16",) if CPU_FP16 else ()):
        trainer = Trainer(tiny(precision=precision, device="cpu"), Dist())
        assert not trainer.steps.scaler.is_enabled()


# -- bf16 on the CPU -----------------------------------------------------------------------------
def test_bf16_forward_autocasts_the_network_and_gives_float32_to_the_loss(tiny):
    trainer = Trainer(tiny(precision="bf16", device="cpu"), Dist())
    x = torch.randn(4, 12, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h, c) = trainer.net.rnn(x)
        y, _ = trainer.net(x)
    # the rnnkit layer returns autocast's dtype (its recurrence runs in float32 inside), the head too
    assert out.dtype == h.dtype == c.dtype == y.dtype == torch.bfloat16
    y, _ = trainer.steps.forward(x)
    assert y.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in trainer.net.parameters())


@pytest.mark.parametrize("first, then", [("bf16", "fp32"), ("fp32", "bf16")])
def test_a_run_resumes_at_the_other_precision(first, then, tiny, tmp_path):
    result = train(tiny(epochs=1, precision=first, device="cpu"))
    run = tmp_path / "run"
    assert result["precision"] == first and all(map(torch.isfinite, torch.tensor(_losses(run))))
    _float32_state(run)
    assert f'precision = "{first}"' in (run / "config.toml").read_text()
    resumed = train(config_for({"resume": str(run), "epochs": 2, "precision": then}))
    assert resumed["precision"] == then and resumed["epochs"] == 2
    assert len(_losses(run)) == 2 and all(map(torch.isfinite, torch.tensor(_losses(run))))
    assert f'precision = "{then}"' in (run / "config.toml").read_text()
    assert ck.load(str(run)).scaler_state() is None


def test_bf16_text_run_carries_float32_state_and_resumes_under_fp32(tiny, tmp_path):
    with pytest.raises(Interrupted):
        train(tiny("text", epochs=1, precision="bf16", device="cpu"), interrupt=lambda step: step == 5)
    run = tmp_path / "run"
    assert ck.load(str(run)).carry()                        # stopped mid-epoch: state carried
    _float32_state(run)
    resumed = train(config_for({"resume": str(run), "precision": "fp32"}))
    assert resumed["epochs"] == 1 and torch.isfinite(torch.tensor(resumed["test"]["test"]["bpc"]))


# -- fp16 on the CPU: runs where torch autocasts to it there, else a clear error --------------------
@needs_cpu_fp16
def test_fp16_cpu_run_completes_unscaled(tiny, tmp_path):
    result = train(tiny(epochs=1, precision="fp16", device="cpu"))
    assert result["precision"] == "fp16" and all(map(torch.isfinite, torch.tensor(_losses(tmp_path / "run"))))
    assert ck.load(str(tmp_path / "run")).scaler_state() is None


def test_fp16_where_torch_cannot_autocast_is_refused_by_name(in_tmp, capsys, monkeypatch):
    if CPU_FP16:        # pretend this torch lacks CPU float16 autocast, as older ones do
        monkeypatch.setattr(stepmod, "autocast_works", lambda kind, dtype: dtype != torch.float16)
    code, out, err = run_cli(["train", "--precision", "fp16", "--device", "cpu", "--epochs", "1",
                              "--no-plots", "--no-progress"], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert "--precision: expected fp32 or bf16 on device cpu" in err and "got 'fp16'" in err
    assert list(in_tmp.iterdir()) == []                    # refused before anything was written


# -- the GradScaler's state in the checkpoint ------------------------------------------------------
@needs_cpu_fp16
def test_scaler_state_is_saved_and_restored(tiny, tmp_path, monkeypatch):
    # torch's GradScaler runs on the CPU too: scale there to exercise the checkpoint path without a GPU
    monkeypatch.setattr(stepmod, "uses_scaler", lambda precision, device: precision == "fp16")
    train(tiny(epochs=1, precision="fp16", device="cpu"))
    saved = ck.load(str(tmp_path / "run")).scaler_state()
    assert saved is not None and saved["scale"] > 0
    saved_to_restore = dict(saved, scale=1024.0, _growth_tracker=3)
    _edit_meta(tmp_path / "run", lambda m: m.update(scaler=json.dumps(saved_to_restore)))
    trainer = Trainer(config_for({"resume": str(tmp_path / "run"), "epochs": 2}), Dist())
    assert trainer.steps.scaler.state_dict() == saved_to_restore
    _edit_meta(tmp_path / "run", lambda m: m.update(scaler=json.dumps({"scale": "big"})))
    with pytest.raises(UserError, match="scaler"):
        Trainer(config_for({"resume": str(tmp_path / "run"), "epochs": 2}), Dist())
    # a run without a scaler ignores the saved one
    trainer = Trainer(config_for({"resume": str(tmp_path / "run"), "epochs": 2, "precision": "bf16"}), Dist())
    assert not trainer.steps.scaler.is_enabled()


def _edit_meta(run, edit) -> None:
    """Rewrite the checkpoint's metadata strings by ``edit(dict)`` (tensors kept)."""
    with safe_open(str(run / ck.NAME), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    edit(meta)
    save_file(tensors, str(run / ck.NAME), metadata=meta)


def test_a_checkpoint_from_before_precision_resumes(tiny, tmp_path):
    """No 'scaler' metadata and no 'precision' in the config: the format version stays 2."""
    train(tiny(epochs=1))
    run = tmp_path / "run"

    def old(meta):
        del meta["scaler"]
        config = json.loads(meta["config"])
        del config["precision"]
        meta["config"] = json.dumps(config)
    _edit_meta(run, old)
    loaded = ck.load(str(run))
    assert loaded.scaler_state() is None and loaded.config("old").precision == "fp32"
    assert train(config_for({"resume": str(run), "epochs": 2}))["epochs"] == 2


def test_layer_under_bf16_autocast_keeps_float32_gradients():
    lstm = rnnkit.LSTM(3, 5, batch_first=True)
    x = torch.randn(2, 4, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = lstm(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in lstm.parameters())


# -- CUDA ---------------------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_run_and_its_resume_on_the_cpu(precision, tiny, tmp_path):
    if precision == "bf16" and not stepmod.autocast_works("cuda", torch.bfloat16):
        pytest.skip("this GPU has no bfloat16")
    result = train(tiny(epochs=1, precision=precision, device="cuda"))
    run = tmp_path / "run"
    assert result["precision"] == precision and all(map(torch.isfinite, torch.tensor(_losses(run))))
    _float32_state(run)
    assert (ck.load(str(run)).scaler_state() is not None) == (precision == "fp16")
    resumed = train(config_for({"resume": str(run), "epochs": 2, "device": "cpu", "precision": "fp32"}))
    assert resumed["epochs"] == 2 and len(_losses(run)) == 2
