"""Shared fixtures: the real seed corpus, isolated settings, and a real model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

SEEDS = ROOT / "seeds"
ARTIFACTS = ROOT / "artifacts"


@pytest.fixture(scope="session")
def seeds_dir() -> Path:
    return SEEDS


def make_settings(tmp_path: Path, **overrides):
    """Settings from the default file, with data under tmp_path and any overrides,
    given as {"section.key": value}."""
    from qa_app.settings import load_settings

    settings = load_settings(ROOT / "config" / "settings.yaml", environ={})
    settings.data_dir = tmp_path / "data"
    for dotted, value in overrides.items():
        section, _, key = dotted.rpartition(".")
        setattr(getattr(settings, section) if section else settings, key, value)
    return settings


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path)
