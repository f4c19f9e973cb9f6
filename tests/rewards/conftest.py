"""Tiny random reward models, built once per test session (no hub: random weights from configs)."""

import pytest


@pytest.fixture(scope="session")
def tiny_mask2former(tmp_path_factory):
    from tdmr1_rewards.detectors import build_tiny_mask2former

    return build_tiny_mask2former(tmp_path_factory.mktemp("mask2former"))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    from tdmr1_rewards.detectors import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("clip"))
