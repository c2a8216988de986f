import os

import pytest
import torch

# Two cores on CI; torch's default thread pool is fine, but keep inter-op threads from
# oversubscribing when pytest and torch both run.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
