"""Run a data-parallel trial on this machine without Ray: W processes, gloo, `DataParallelLoop`.

    records = run_local(TrialConfig(arch="tiny_cnn", dataset="digits", workers=2, epochs=3))

For tests and benchmarks (the reference an interrupted Ray run is compared with, the W = 2 against
W = 1 cost per sample): the same loop as a Ray Train worker, with `torch.distributed` started here
(gloo on a free loopback port) instead of by Ray Train. Rank 0's records come back; with
`checkpoint_dir`, rank 0 saves there after every epoch and every rank resumes from it when it exists.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from typing import Any

from trainables.config import TrialConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank(rank: int, stored: dict[str, Any], workers: int, port: int, out: str, checkpoint_dir: str | None) -> None:
    import torch.distributed as dist

    from trainables.ddp_loop import DataParallelLoop

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=workers)
    try:
        loop = DataParallelLoop(TrialConfig.from_stored(stored), rank, workers)
        if checkpoint_dir and os.path.exists(os.path.join(checkpoint_dir, "state.pt")):
            loop.load_checkpoint(checkpoint_dir)
        records = []
        while not loop.done:
            records.append(loop.run_epoch())
            if checkpoint_dir and rank == 0:
                loop.save_checkpoint(checkpoint_dir)
            dist.barrier()  # no rank reads a checkpoint rank 0 is still writing
        if rank == 0:
            with open(out, "w", encoding="utf-8") as f:
                json.dump(records, f)
    finally:
        dist.destroy_process_group()


def run_local(config: TrialConfig, checkpoint_dir: str | None = None) -> list[dict[str, Any]]:
    """Rank 0's records of `config` (config.workers ranks, CPU, one thread each) run to its epochs."""
    import torch.multiprocessing as mp

    cfg = config.replace(device="cpu", threads=config.threads or 1)
    with tempfile.TemporaryDirectory(prefix="deba-ddp-") as tmp:
        out = os.path.join(tmp, "records.json")
        mp.spawn(_rank, args=(cfg.stored(), cfg.workers, _free_port(), out, checkpoint_dir), nprocs=cfg.workers)
        with open(out, encoding="utf-8") as f:
            return json.load(f)
