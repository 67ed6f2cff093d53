"""TF Lite metadata inside our `.tflite` files, written with MediaPipe's metadata writers (the
successor of the TF Lite Support library, whose protobuf < 4 pin clashes with onnx and TensorFlow):
image input with its normalisation, the class names as the output's labels file, the output read as
logits through softmax. MediaPipe's `ImageSegmenter` task then runs the file with no extra code.

The whole metadata JSON of the export rides along as custom metadata named `seg`.
"""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path
from typing import Any, Optional

from seg.export.common import ExportError

MISSING = (
    "embedding TF Lite metadata needs MediaPipe's metadata writers: pip install --no-deps mediapipe==1.2.3 "
    "(see README, TFLite, ExecuTorch, Core ML)"
)
# The metadata schema version of the fields written here (subgraph custom metadata: schema 1.5.0).
MIN_PARSER_VERSION = "1.5.0"
SEG_METADATA_NAME = "seg"


def _provide_parser_version_module() -> None:
    """MediaPipe's wheels since 0.10.30 leave out the compiled module that the metadata populator
    imports to stamp the minimum parser version. Where it is missing, a module answering the version
    of the schema fields these writers use stands in for it; nothing else of MediaPipe changes."""
    name = "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"
    try:
        __import__(name)
        return
    except ImportError:
        pass
    parts = name.split(".")
    for i in range(3, len(parts)):
        package = ".".join(parts[:i])
        if package not in sys.modules:
            module = types.ModuleType(package)
            module.__path__ = []
            sys.modules[package] = module
    stand_in = types.ModuleType(name)
    stand_in.GetMinimumMetadataParserVersion = lambda buffer: MIN_PARSER_VERSION  # type: ignore[attr-defined]
    sys.modules[name] = stand_in


def _writers() -> Any:
    try:
        import mediapipe.tasks.metadata.metadata_schema_py_generated  # noqa: F401
    except ImportError as exc:
        raise ExportError(MISSING) from exc
    _provide_parser_version_module()
    from mediapipe.tasks.metadata import metadata_schema_py_generated as schema
    from mediapipe.tasks.python.metadata.metadata_writers import image_segmenter, metadata_info, metadata_writer

    return schema, image_segmenter, metadata_info, metadata_writer


def embed_tflite_metadata(path: str | os.PathLike, metadata: dict[str, Any]) -> None:
    """Write TF Lite metadata into the `.tflite` at `path`, from our export `metadata`."""
    schema, image_segmenter, metadata_info, metadata_writer = _writers()

    class SegMetadataMd(metadata_info.CustomMetadataMd):
        def create_metadata(self) -> Any:
            custom = schema.CustomMetadataT()
            custom.name = SEG_METADATA_NAME
            custom.data = list(json.dumps(metadata, sort_keys=True).encode())
            return custom

    path = Path(path)
    norm = metadata["normalization"]
    # Raw bytes go in when the normalisation is inside the model: nothing for the task to do to them.
    mean, std = (
        ([0.0], [1.0]) if norm["included"] else ([float(v) for v in norm["mean"]], [float(v) for v in norm["std"]])
    )
    model = metadata["model"]
    writer = metadata_writer.MetadataWriter(bytearray(path.read_bytes()))
    writer.add_general_info(
        f"DeepLab {model['backbone']} + {model['head']}",
        f"Semantic segmentation, {metadata['num_classes']} classes, output stride {model['output_stride']}; "
        f"input RGB {metadata['input']['height']}x{metadata['input']['width']}, output "
        f"{metadata['output']['kind']} at the input size.",
    )
    writer.add_image_input(mean, std)
    if metadata["output"]["kind"] == "logits":
        writer.add_custom_metadata(image_segmenter.ImageSegmenterOptionsMd(image_segmenter.Activation.SOFTMAX))
    writer.add_custom_metadata(SegMetadataMd(SEG_METADATA_NAME))
    writer.add_segmentation_output(labels=metadata_writer.Labels().add(list(metadata["class_names"])))
    try:
        content, _ = writer.populate()
    except (ValueError, RuntimeError) as exc:
        raise ExportError(f"{path}: writing TF Lite metadata failed: {str(exc).splitlines()[0]}") from exc
    finally:
        # Something in MediaPipe's populator keeps this frame alive: a writer left in it would clean its
        # temporary folder at interpreter exit, when `os` is gone, and print an ignored exception.
        del writer
    path.write_bytes(bytes(content))


def embedded_metadata(path: str | os.PathLike) -> Optional[dict[str, Any]]:
    """The export metadata stored inside one of our `.tflite` files (custom metadata `seg`), for a
    file whose JSON is not beside it; None for a file without it (the official DeepLab files) or
    without MediaPipe's metadata schema installed. Read as data: flatbuffers and JSON only."""
    try:
        from mediapipe.tasks.metadata import metadata_schema_py_generated as schema
    except ImportError:
        return None
    from ai_edge_litert import schema_py_generated as tflite_schema

    data = Path(path).read_bytes()
    try:
        model = tflite_schema.Model.GetRootAsModel(data, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() != b"TFLITE_METADATA":
                continue
            buffer = model.Buffers(entry.Buffer())
            if buffer.DataIsNone():
                return None
            metadata = schema.ModelMetadata.GetRootAsModelMetadata(buffer.DataAsNumpy().tobytes(), 0)
            for j in range(metadata.SubgraphMetadataLength()):
                subgraph = metadata.SubgraphMetadata(j)
                for k in range(subgraph.CustomMetadataLength()):
                    custom = subgraph.CustomMetadata(k)
                    if custom.Name() == SEG_METADATA_NAME.encode():
                        found = json.loads(custom.DataAsNumpy().tobytes())
                        return found if isinstance(found, dict) else None
    except (ValueError, IndexError, TypeError, AttributeError, UnicodeDecodeError):
        return None  # not a flatbuffer we can read: the caller reads the file as an official one
    return None
