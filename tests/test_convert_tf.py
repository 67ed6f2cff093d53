"""The TF DeepLab converter against TensorFlow itself, on graphs the tests build (the release files
cannot be downloaded here)."""

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config
from omegaconf import OmegaConf

from seg.models import build_segmenter
from seg.models.layers import tf_same_pad
from seg.models.tf_weights import convert_deeplab, read_tf_checkpoint
from seg.models.weights import WeightsError

tf = pytest.importorskip("tensorflow")
import tf_deeplab_reference as reference  # noqa: E402  (needs TensorFlow)

EXPERIMENT = {1.0: "mobilenetv2_coco_voc_trainaug", 0.5: "mobilenetv2_dm05_coco_voc_trainaug"}


def experiment_config(depth_multiplier: float, *overrides: str):
    return compose_config(f"experiment={EXPERIMENT[depth_multiplier]}", *overrides)


def run_converted(state: dict, image_nhwc: np.ndarray, output_stride: int, **model_changes) -> np.ndarray:
    model_cfg = OmegaConf.create(state["config"]).model
    for key, value in model_changes.items():
        OmegaConf.update(model_cfg, key, value)
    model = build_segmenter(model_cfg)
    model.load_state_dict(state["model"])
    model.eval().set_output_stride(output_stride)
    with torch.no_grad():
        return model(torch.from_numpy(image_nhwc).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """(depth multiplier, output stride, size) -> (image, TF logits, frozen graph, checkpoint prefix)."""
    cases = {}
    for dm, os_, size in [(1.0, 16, (513, 513)), (1.0, 8, (256, 192)), (0.5, 16, (512, 384)), (0.5, 8, (513, 513))]:
        cases[(dm, os_, size)] = reference.export(tmp_path_factory.mktemp(f"dm{dm}_os{os_}"), dm, os_, *size)
    return cases


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", [(1.0, 16, (513, 513)), (1.0, 8, (256, 192)), (0.5, 16, (512, 384)), (0.5, 8, (513, 513))]
)
@pytest.mark.parametrize("form", ["frozen_graph", "checkpoint"])
def test_converted_model_matches_tensorflow(releases, case, form):
    dm, os_, _ = case
    image, tf_logits, pb, prefix = releases[case]
    state = convert_deeplab(pb if form == "frozen_graph" else prefix, experiment_config(dm))
    ours = run_converted(state, image, os_)
    assert np.abs(ours - tf_logits).max() < 1e-4


@pytest.mark.slow
def test_tensorflow_numerics_options_matter(releases):
    image, tf_logits, pb, _ = releases[(0.5, 16, (512, 384))]  # even size: SAME pads asymmetrically
    state = convert_deeplab(pb, experiment_config(0.5))
    assert np.abs(run_converted(state, image, 16) - tf_logits).max() < 1e-4
    for change in ({"backbone.tf_same_padding": False}, {"align_corners": False}, {"backbone.bn_eps": 1e-5}):
        assert np.abs(run_converted(state, image, 16, **change) - tf_logits).max() > 1e-3, change


@pytest.mark.slow
def test_provenance_and_stored_numerics(releases):
    _, _, pb, _ = releases[(1.0, 16, (513, 513))]
    state = convert_deeplab(pb, experiment_config(1.0))
    assert state["provenance"]["sha256"] == hashlib.sha256(pb.read_bytes()).hexdigest()
    mapping = state["provenance"]["mapping"]
    assert mapping["backbone.stem.conv.weight"] == "MobilenetV2/Conv/weights"
    assert mapping["backbone.blocks.16.project.conv.weight"] == "MobilenetV2/expanded_conv_16/project/weights"
    assert mapping["head.classifier.bias"] == "logits/semantic/biases"
    model = OmegaConf.create(state["config"]).model
    assert model.backbone.tf_same_padding and model.align_corners and model.normalization == "deeplab"
    assert model.backbone.bn_eps == pytest.approx(1e-3)


def _graph_without(pb_path, out_path, drop=None, add=None):
    from tensorboard.compat.proto import graph_pb2

    graph = graph_pb2.GraphDef()
    graph.ParseFromString(pb_path.read_bytes())
    nodes = [n for n in graph.node if n.name != drop]
    del graph.node[:]
    graph.node.extend(nodes)
    if add is not None:
        extra = graph.node.add()
        extra.CopyFrom([n for n in nodes if n.name == "aspp0/weights"][0])
        extra.name = add
    out_path.write_bytes(graph.SerializeToString())
    return out_path


@pytest.mark.slow
def test_mapping_failures_name_the_tensor(releases, tmp_path):
    _, _, pb, _ = releases[(1.0, 16, (513, 513))]
    missing = _graph_without(pb, tmp_path / "missing.pb", drop="MobilenetV2/expanded_conv_7/expand/weights")
    with pytest.raises(WeightsError, match="missing in the file: MobilenetV2/expanded_conv_7/expand/weights"):
        convert_deeplab(missing, experiment_config(1.0))
    extra = _graph_without(pb, tmp_path / "extra.pb", add="aspp1/weights")
    with pytest.raises(WeightsError, match="unused tensor in the file: aspp1/weights"):
        convert_deeplab(extra, experiment_config(1.0))
    with pytest.raises(WeightsError, match=r"shape mismatch: MobilenetV2/Conv/weights \(3, 3, 3, 32\)"):
        convert_deeplab(pb, experiment_config(0.5))  # a multiplier-1.0 release into the 0.5 model
    with pytest.raises(WeightsError, match="image-level head"):
        convert_deeplab(pb, experiment_config(1.0, "head=deeplabv3plus"))
    with pytest.raises(WeightsError, match="expected a frozen graph"):
        convert_deeplab(tmp_path / "nothing", experiment_config(1.0))


def test_checkpoint_path_without_tensorflow_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import tensorflow -> ImportError
    with pytest.raises(WeightsError, match=r"pip install '.\[tf\]'"):
        read_tf_checkpoint(tmp_path / "model.ckpt-1")


def test_tf_same_padding_values():
    assert tf_same_pad((513, 513), 3, 2, 1) == (1, 1, 1, 1)
    assert tf_same_pad((512, 384), 3, 2, 1) == (0, 1, 0, 1)
    assert tf_same_pad((10, 11), 5, 2, 1) == (2, 2, 1, 2)


def _tar(path, members: dict) -> object:
    import tarfile

    with tarfile.open(path, "w:gz") as archive:
        for name, file in members.items():
            archive.add(str(file), arcname=name)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("form", ["frozen_graph", "checkpoint"])
def test_release_archive_converts_without_unpacking(releases, tmp_path, form):
    from seg.models.official import convert_source

    image, tf_logits, pb, prefix = releases[(0.5, 8, (513, 513))]
    prefix = Path(prefix)
    folder = "deeplabv3_mnv2_dm05_pascal_trainaug"
    members = {f"{folder}/{p.name}": p for p in sorted(prefix.parent.glob(prefix.name + ".*"))}
    if form == "frozen_graph":
        members = {f"{folder}/frozen_inference_graph.pb": pb, **members}
    archive = _tar(tmp_path / "release.tar.gz", members)
    state = convert_source(archive)
    # The architecture comes from the file: depth multiplier, classes and (from the graph) output stride.
    model_cfg = OmegaConf.create(state["config"]).model
    assert model_cfg.backbone.depth_multiplier == 0.5 and model_cfg.num_classes == 21
    assert model_cfg.output_stride == (8 if form == "frozen_graph" else 16)  # a checkpoint records no strides
    assert np.abs(run_converted(state, image, 8) - tf_logits).max() < 1e-4
    p = state["provenance"]
    assert p["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert p["archive_member"].startswith(folder) and p["format"].startswith("archive/")
    assert not any(tmp_path.glob(f"{folder}*")), "nothing is unpacked beside the archive"


def test_archive_without_a_model_names_what_it_holds(tmp_path):
    from seg.models.official import convert_source

    (tmp_path / "README").write_text("no model here")
    archive = _tar(tmp_path / "other.tar.gz", {"release/README": tmp_path / "README"})
    with pytest.raises(WeightsError, match=r"no frozen_inference_graph.pb .*it holds: release/README"):
        convert_source(archive)


@pytest.mark.slow
def test_a_checkpoint_prefix_converts_with_the_architecture_read_from_it(releases):
    from seg.models.official import convert_source
    from seg.models.tf_weights import sha256

    image, tf_logits, _, prefix = releases[(1.0, 16, (513, 513))]
    state = convert_source(prefix)
    model_cfg = OmegaConf.create(state["config"]).model
    assert model_cfg.backbone.depth_multiplier == 1.0 and model_cfg.output_stride == 16
    assert state["provenance"]["sha256"] == sha256(prefix) and state["provenance"]["format"] == "tf_checkpoint"
    assert np.abs(run_converted(state, image, 16) - tf_logits).max() < 1e-4
