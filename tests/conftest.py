import sys
from pathlib import Path

import pytest
import torch

# torchvision pulls in torch's triton; loading it after TensorFlow (the converter tests) crashes the
# process, as both bring their own LLVM. Loading it first is safe.
import torchvision  # noqa: F401
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from seg.config import register_configs

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
# Real VOC / COCO sample files kept beside the repository (never copied into it).
REAL_FIXTURES = REPO.parent / "shared" / "fixtures" / "real"
# The official DeepLab files and real VOC images with ground truth (README there); tests skip without them.
OFFICIAL_FIXTURES = REPO.parent / "shared" / "fixtures" / "official"

sys.path.insert(0, str(Path(__file__).resolve().parent))

register_configs()  # the schemas conf/*.yaml name, once for every test


def compose_config(*overrides: str) -> DictConfig:
    """conf/config.yaml with these overrides, composed as the tools compose it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def tiny_train_args(root: Path, *overrides: str) -> list[str]:
    """A few iterations of the default model on a 16-image built-in dataset of 48x48 images."""
    return [
        "head=lraspp",
        "model.backbone.pretrained=null",  # real datasets start from ImageNet by default: no downloads here
        f"dataset.root={root}",
        "dataset.synthetic.num_train=16",
        "dataset.synthetic.num_val=4",
        "dataset.synthetic.image_size=48",
        "dataset.num_workers=0",
        "train.max_iters=4",
        "train.batch_size=4",
        "train.crop_size=32",
        "train.lr=0.01",
        "train.warmup_iters=0",
        "train.eval_every=0",
        "train.checkpoint_every=2",
        "train.log_every=1",
        "train.progress=false",
        "train.vis_images=1",
        *overrides,
    ]


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


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    """Where the built-in dataset of `tiny_train_args` is generated: once per test module."""
    return tmp_path_factory.mktemp("synthetic")


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is fastest, and immune to other jobs on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def real_fixtures() -> Path:
    if not REAL_FIXTURES.is_dir():
        pytest.skip(f"real-format fixtures not found at {REAL_FIXTURES}")
    return REAL_FIXTURES
