import sys
from pathlib import Path

import pytest
import torch
# torchvision pulls in torch's triton; loading it after TensorFlow (the converter tests) crashes the
# process, as both bring their own LLVM. Loading it first is safe.
import torchvision  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
# Real VOC / COCO sample files kept beside the repository (never copied into it).
REAL_FIXTURES = REPO.parent / "shared" / "fixtures" / "real"

sys.path.insert(0, str(Path(__file__).resolve().parent))


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Batch-norm statistics and affine terms that are not the identity, so that folding them or
    loading them is really tested."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)


@pytest.fixture
def real_fixtures() -> Path:
    if not REAL_FIXTURES.is_dir():
        pytest.skip(f"real-format fixtures not found at {REAL_FIXTURES}")
    return REAL_FIXTURES
