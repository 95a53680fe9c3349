"""Fixtures for the trainer tests (helpers in train_helpers.py).

    tiny(task, out="run", **options)   a resolved Config that trains in well under a second
    in_tmp                             run the test inside an empty folder
"""
from __future__ import annotations

import pytest

from rnnkit.train import resolve

from train_helpers import TASK_TINY, TINY, data_options


@pytest.fixture
def tiny(tmp_path):
    def make(task: str = "sunspots", out: str = "run", **options):
        values = {"task": task, **TINY, **TASK_TINY[task], **data_options(task, tmp_path),
                  "out": str(tmp_path / out), **options}
        return resolve(values)
    return make


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty folder so default run folders (runs/...) land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
