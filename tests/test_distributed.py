import torch

from seg.engine import distributed as d


def test_single_process_without_torchrun_env(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    assert d.init_distributed() == (0, 1, 0)
    assert not torch.distributed.is_initialized()
    assert d.get_world_size() == 1 and d.get_rank() == 0 and d.is_main_process()
    d.barrier()
    d.cleanup()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    assert d.convert_sync_batchnorm(model) is model
    assert isinstance(model[1], torch.nn.BatchNorm2d)


def _worker(rank: int, world_size: int, port: int, out: dict) -> None:
    import os

    from seg.metrics import ConfusionMatrix

    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    # Force gloo even on a GPU machine: this test is about the CPU path.
    d.torch.cuda.is_available = lambda: False
    try:
        assert d.init_distributed() == (rank, world_size, rank)
        cm = ConfusionMatrix(3)
        cm.update(torch.tensor([rank]), torch.tensor([rank]))  # each rank sees one pixel
        cm.all_reduce()
        d.barrier()
        out[rank] = (
            cm.compute()["confusion_matrix"],
            d.is_main_process(),
            type(d.convert_sync_batchnorm(torch.nn.BatchNorm2d(2))).__name__,
        )
    finally:
        d.cleanup()


def test_two_process_gloo_group():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, port, out), nprocs=2, join=True)
        results = dict(out)
    expected = [[1, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert results[0] == (expected, True, "SyncBatchNorm")
    assert results[1] == (expected, False, "SyncBatchNorm")
