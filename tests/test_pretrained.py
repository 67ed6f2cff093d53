"""seg.pretrained: the registry of official releases, the download-once cache (over a local HTTP
server and file:// URLs, never the internet), checksum checks, convert-once, from_pretrained and
`train.init_from=pretrained:NAME`."""

import functools
import hashlib
import http.server
import re
import socket
import subprocess
import sys
import threading
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import OFFICIAL_FIXTURES, REPO, compose_config
from omegaconf import OmegaConf

import seg
from seg import pretrained
from seg.pretrained import RELEASES, PretrainedError, Release

OFFICIAL = OFFICIAL_FIXTURES
PAYLOAD = b"not really a model, but bytes with a known checksum\n" * 100
NAME = "test_release"


@pytest.fixture(autouse=True)
def _no_proxy_no_cache_env(monkeypatch):
    # A proxy set on the machine would take the requests meant for 127.0.0.1; a cache set by the
    # user must not receive the tests' files.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv(pretrained.CACHE_ENV, raising=False)


@dataclass
class Served:
    root: Path
    url: str
    requests: list


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving `root`, counting the GET requests it receives."""
    root = tmp_path / "served"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            if self.path == "/truncated.bin":  # promises more bytes than it sends, then hangs up
                self.send_response(200)
                self.send_header("Content-Length", str(len(PAYLOAD)))
                self.end_headers()
                self.wfile.write(PAYLOAD[:100])
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    yield from _serve(functools.partial(Handler, directory=str(root)), root, requests)


def _serve(handler, root: Path, requests: list):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Served(root, f"http://127.0.0.1:{httpd.server_address[1]}", requests)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def closed_port_url(file_name: str = "fake.bin") -> str:
    """A URL nothing listens on: the connection is refused, as it is offline."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{file_name}"


def register(monkeypatch, url: str, data: bytes = PAYLOAD, known_sha: bool = True, name: str = NAME) -> Release:
    release = Release(
        name=name,
        url=url,
        sha256=hashlib.sha256(data).hexdigest() if known_sha else None,
        file_name="fake.bin",
        kind="tflite",
        depth_multiplier=0.5,
        output_stride=16,
        published="none",
        description="a test release",
        input_size=64,
    )
    monkeypatch.setitem(RELEASES, name, release)
    return release


@pytest.fixture(scope="module")
def tiny_state():
    """What a converter returns, for a small real model (so that load_segmenter can build it)."""
    from seg.models import build_segmenter

    cfg = compose_config("head=lraspp")
    model = build_segmenter(cfg.model)
    return {"model": model.state_dict(), "config": OmegaConf.to_yaml(cfg, resolve=True), "iteration": 0}


@pytest.fixture
def converter(monkeypatch, tiny_state):
    """A fake `seg.models.official.convert_source` (whether or not the real one exists yet) that
    records its calls."""
    calls = []

    def convert_source(source, output_stride=None):
        calls.append((Path(source), output_stride))
        return {**tiny_state, "metrics": {}, "provenance": {"source": str(source), "sha256": "x"}}

    module = types.ModuleType("seg.models.official")
    module.convert_source = convert_source
    monkeypatch.setitem(sys.modules, "seg.models.official", module)
    return calls


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- the registry


def test_releases_are_complete_and_consistent():
    assert {
        "mobilenetv2_coco_voc_trainaug",
        "mobilenetv2_coco_voc_trainval",
        "mobilenetv2_dm05_coco_voc_trainaug",
        "mobilenetv2_dm05_coco_voc_trainval",
        "deeplabv3_257_mv_gpu",
        "deeplabv3_mnv2_dm05_pascal_quant",
        "deeplabv3_mnv2_pascal_quant",
    } <= set(RELEASES)
    for name, r in RELEASES.items():
        assert r.name == name
        assert r.url.rsplit("/", 1)[-1] == r.file_name
        assert r.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", r.sha256)
        assert r.kind in ("archive", "tflite")
        assert (r.input_size is not None) == (r.kind == "tflite")
        assert r.output_stride in (8, 16) and r.depth_multiplier in (0.5, 1.0) and r.num_classes == 21
        assert "%" in r.published or "no mIoU" in r.published
    with pytest.raises(AttributeError):
        RELEASES["deeplabv3_257_mv_gpu"].url = "elsewhere"  # frozen: a test or caller cannot change the registry


@pytest.mark.parametrize("name", ["deeplabv3_257_mv_gpu", "deeplabv3_mnv2_dm05_pascal_quant"])
def test_recorded_sha256_is_the_released_files(name):
    path = OFFICIAL / "models" / RELEASES[name].file_name
    if not path.is_file():
        pytest.skip(f"{path} not found")
    assert pretrained.file_sha256(path) == RELEASES[name].sha256


def test_unknown_name_lists_the_known_ones(tmp_path):
    with pytest.raises(PretrainedError) as info:
        pretrained.pretrained_checkpoint("mobilenetv2_coco_voc_trainag", cache_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message and "'mobilenetv2_coco_voc_trainag'" in message
    assert "did you mean mobilenetv2_coco_voc_trainaug?" in message
    assert all(name in message for name in RELEASES)
    assert leftovers(tmp_path) == []


def test_describe_releases_table():
    table = pretrained.describe_releases()
    lines = table.splitlines()
    assert lines[0].startswith("| name | kind | depth multiplier | output stride | published | URL |")
    assert len(lines) == 2 + len(RELEASES)
    for r in RELEASES.values():
        assert f"`{r.name}`" in table and r.url in table
    assert "75.32%" in table and "257x257" in table
    printed = subprocess.run(
        [sys.executable, "-m", "seg.pretrained"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert printed.strip() == table


def test_seg_exports_from_pretrained_lazily():
    assert seg.from_pretrained is pretrained.from_pretrained
    code = "import sys, seg; assert 'seg.pretrained' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# --- the cache folder


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert pretrained.cache_root() == tmp_path / "home" / ".cache" / "seg" / "pretrained"
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "env"))
    assert pretrained.cache_root() == tmp_path / "env"
    assert pretrained.cache_root(tmp_path / "arg") == tmp_path / "arg"
    release = RELEASES["deeplabv3_257_mv_gpu"]
    assert pretrained.downloaded_path(release) == tmp_path / "env" / "downloads" / "deeplabv3_257_mv_gpu.tflite"
    assert pretrained.converted_path("x", tmp_path / "arg") == tmp_path / "arg" / "converted" / "x.pt"


def test_cache_dir_from_environment(server, tmp_path, monkeypatch, converter):
    (server.root / "fake.bin").write_bytes(PAYLOAD)
    register(monkeypatch, f"{server.url}/fake.bin")
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "from_env"))
    path = pretrained.pretrained_checkpoint(NAME)
    assert path == tmp_path / "from_env" / "converted" / f"{NAME}.pt"
    assert (tmp_path / "from_env" / "downloads" / "fake.bin").read_bytes() == PAYLOAD


# --- downloads


def test_downloads_once_over_http(server, tmp_path, monkeypatch):
    (server.root / "fake.bin").write_bytes(PAYLOAD)
    release = register(monkeypatch, f"{server.url}/fake.bin")
    path = pretrained.download(release, tmp_path / "cache")
    assert path == tmp_path / "cache" / "downloads" / "fake.bin"
    assert path.read_bytes() == PAYLOAD
    assert server.requests == ["/fake.bin"]
    assert leftovers(path.parent) == ["fake.bin"]  # no temporary left beside it

    (server.root / "fake.bin").unlink()
    assert pretrained.download(release, tmp_path / "cache") == path
    assert server.requests == ["/fake.bin"]  # the second call made no request


def test_downloads_a_file_url(tmp_path, monkeypatch):
    source = tmp_path / "mirror" / "fake.bin"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    release = register(monkeypatch, source.as_uri(), known_sha=False)
    path = pretrained.download(release, tmp_path / "cache")
    assert path.read_bytes() == PAYLOAD
    source.unlink()
    assert pretrained.download(release, tmp_path / "cache") == path  # reused, no sha256 to check


def test_wrong_sha256_discards_the_download(server, tmp_path, monkeypatch):
    (server.root / "fake.bin").write_bytes(PAYLOAD)
    url = f"{server.url}/fake.bin"
    release = register(monkeypatch, url, data=b"the bytes that were published")
    with pytest.raises(PretrainedError) as info:
        pretrained.download(release, tmp_path)
    message = str(info.value)
    assert "\n" not in message and url in message
    assert f"expected sha256 {release.sha256}" in message
    assert f"got {hashlib.sha256(PAYLOAD).hexdigest()}" in message
    assert leftovers(tmp_path / "downloads") == []


def test_truncated_transfer_leaves_no_file(server, tmp_path, monkeypatch):
    release = register(monkeypatch, f"{server.url}/truncated.bin", known_sha=False)
    with pytest.raises(PretrainedError, match="cannot download .*truncated.bin"):
        pretrained.download(release, tmp_path)
    assert leftovers(tmp_path / "downloads") == []


def test_offline_names_the_url_and_where_to_put_the_file(tmp_path, monkeypatch):
    url = closed_port_url()
    release = register(monkeypatch, url)
    with pytest.raises(PretrainedError) as info:
        pretrained.download(release, tmp_path)
    message = str(info.value)
    target = tmp_path / "downloads" / "fake.bin"
    assert "\n" not in message
    assert message.startswith(f"cannot download {url} (")
    assert message.endswith(f"download it by hand and put it at {target}")
    assert leftovers(tmp_path / "downloads") == []

    missing = register(monkeypatch, (tmp_path / "nowhere.bin").as_uri())
    with pytest.raises(PretrainedError, match="cannot download file://.*put it at"):
        pretrained.download(missing, tmp_path)


def test_file_put_there_by_hand_is_used_offline(tmp_path, monkeypatch, converter):
    register(monkeypatch, closed_port_url())
    by_hand = tmp_path / "downloads" / "fake.bin"
    by_hand.parent.mkdir(parents=True)
    by_hand.write_bytes(PAYLOAD)
    path = pretrained.pretrained_checkpoint(NAME, cache_dir=tmp_path)
    assert path.is_file() and converter == [(by_hand, 16)]


def test_wrong_file_put_there_by_hand_is_named_offline(tmp_path, monkeypatch):
    release = register(monkeypatch, closed_port_url())
    by_hand = tmp_path / "downloads" / "fake.bin"
    by_hand.parent.mkdir(parents=True)
    by_hand.write_bytes(b"some other file")
    with pytest.raises(PretrainedError) as info:
        pretrained.download(release, tmp_path)
    message = str(info.value)
    assert f"put it at {by_hand}" in message
    assert f"has sha256 {hashlib.sha256(b'some other file').hexdigest()}, not the published {release.sha256}" in message
    assert by_hand.read_bytes() == b"some other file"  # left for the user to look at


def test_damaged_download_is_replaced(server, tmp_path, monkeypatch):
    (server.root / "fake.bin").write_bytes(PAYLOAD)
    release = register(monkeypatch, f"{server.url}/fake.bin")
    damaged = tmp_path / "downloads" / "fake.bin"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(PAYLOAD[:-10])
    assert pretrained.download(release, tmp_path).read_bytes() == PAYLOAD
    assert server.requests == ["/fake.bin"]


# --- convert once, load, init_from


def test_converts_once(server, tmp_path, monkeypatch, converter):
    (server.root / "fake.bin").write_bytes(PAYLOAD)
    url = f"{server.url}/fake.bin"
    register(monkeypatch, url)
    path = pretrained.pretrained_checkpoint(NAME, cache_dir=tmp_path)
    assert path == tmp_path / "converted" / f"{NAME}.pt"
    assert converter == [(tmp_path / "downloads" / "fake.bin", 16)]
    assert leftovers(path.parent) == [f"{NAME}.pt"]

    from seg.engine.checkpoint import load_checkpoint

    provenance = load_checkpoint(path)["provenance"]
    assert provenance["release"] == NAME and provenance["url"] == url and provenance["sha256"] == "x"

    assert pretrained.pretrained_checkpoint(NAME, cache_dir=tmp_path) == path
    assert len(converter) == 1 and server.requests == ["/fake.bin"]


def test_url_override_fetches_from_the_mirror(server, tmp_path, monkeypatch, converter):
    (server.root / "fake.bin").write_bytes(PAYLOAD)
    register(monkeypatch, closed_port_url())
    mirror = f"{server.url}/fake.bin"
    path = pretrained.pretrained_checkpoint(NAME, cache_dir=tmp_path, url=mirror)
    from seg.engine.checkpoint import load_checkpoint

    assert load_checkpoint(path)["provenance"]["url"] == mirror
    assert server.requests == ["/fake.bin"]


def test_from_pretrained_gives_a_segmenter_in_eval_mode(server, tmp_path, monkeypatch, converter, one_thread):
    from seg.models.segmenter import Segmenter

    (server.root / "fake.bin").write_bytes(PAYLOAD)
    register(monkeypatch, f"{server.url}/fake.bin")
    model = seg.from_pretrained(NAME, cache_dir=tmp_path)
    assert isinstance(model, Segmenter) and not model.training
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 21, 64, 64)
    seg.from_pretrained(NAME, cache_dir=tmp_path)
    assert len(converter) == 1


def test_resolve_init_from(server, tmp_path, monkeypatch, converter):
    cache = tmp_path / "cache"
    for value in ("", "outputs/run/best.pt", "/abs/last.pt", "pretrained.pt"):
        assert pretrained.resolve_init_from(value, cache_dir=cache) == value
    assert converter == [] and leftovers(cache) == []

    (server.root / "fake.bin").write_bytes(PAYLOAD)
    register(monkeypatch, f"{server.url}/fake.bin")
    resolved = pretrained.resolve_init_from(f"pretrained:{NAME}", cache_dir=cache)
    assert resolved == str(cache / "converted" / f"{NAME}.pt") and Path(resolved).is_file()
    with pytest.raises(PretrainedError, match="unknown pretrained model 'nope'"):
        pretrained.resolve_init_from("pretrained:nope", cache_dir=cache)


# --- the real converter on a real release


@pytest.mark.slow
def test_real_tflite_release_end_to_end(tmp_path, one_thread):
    name = "deeplabv3_257_mv_gpu"
    models = OFFICIAL / "models"
    if not (models / RELEASES[name].file_name).is_file():
        pytest.skip(f"official fixtures not found at {models}")
    try:
        from seg.models.official import convert_source  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"seg.models.official not available yet ({exc})")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    # Served from where the fixture lies (read-only, never copied into the project).
    served = _serve(functools.partial(Quiet, directory=str(models)), models, [])
    where = next(served)
    try:
        model = pretrained.from_pretrained(name, cache_dir=tmp_path, url=f"{where.url}/{RELEASES[name].file_name}")
    finally:
        served.close()
    assert not model.training
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 257, 257))
    assert list(out.shape) == [1, 21, 257, 257]
    assert torch.isfinite(out).all()

    from seg.engine.checkpoint import load_checkpoint

    provenance = load_checkpoint(pretrained.converted_path(name, tmp_path))["provenance"]
    assert provenance["release"] == name and provenance["url"].endswith(RELEASES[name].file_name)
    assert provenance["sha256"] == RELEASES[name].sha256
