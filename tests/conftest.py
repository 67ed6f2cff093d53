import sys
from pathlib import Path

import pytest
# torchvision pulls in torch's triton; loading it after TensorFlow (the converter tests) crashes the
# process, as both bring their own LLVM. Loading it first is safe.
import torchvision  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
# Real VOC / COCO sample files kept beside the repository (never copied into it).
REAL_FIXTURES = REPO.parent / "shared" / "fixtures" / "real"

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def real_fixtures() -> Path:
    if not REAL_FIXTURES.is_dir():
        pytest.skip(f"real-format fixtures not found at {REAL_FIXTURES}")
    return REAL_FIXTURES
