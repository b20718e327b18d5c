"""Shared by the core's tests."""

import pytest
import torch


@pytest.fixture
def batch():
    """``(input_ids, attention_mask)`` ``[2, 7]``: two prompts, the second left padded by two positions."""
    torch.manual_seed(1)
    ids = torch.randint(3, 128, (2, 7))
    mask = torch.ones_like(ids)
    ids[1, :2], mask[1, :2] = 0, 0  # second prompt left padded
    return ids, mask
