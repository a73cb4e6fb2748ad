"""One rank of a DDP run: ``python -m trainlab.execute.rank LAUNCH.json`` under torchrun.

Started by :func:`trainlab.execute.torchrun.train_distributed`; not meant to be run by hand.
Joins the process group (NCCL on CUDA, one GPU per local rank; gloo on CPU), connects to the
launcher, trains with the one engine loop (which sees the group through
:func:`trainlab.engine.distributed.current`), reports its outcome, and exits non-zero when its
run failed so that torchrun ends the other ranks instead of leaving them waiting.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from multiprocessing.connection import Client
from pathlib import Path

import torch
import torch.distributed as dist

from trainlab.config.schema import resolve_run
from trainlab.devices import resolve_device
from trainlab.engine import distributed, train
from trainlab.execute.relay import ConnectionChannel, DiscardSink, RelayCallback, RemoteStore
from trainlab.execute.torchrun import AUTHKEY_ENV


def main(argv: list[str]) -> int:
    # The launcher forwards Ctrl-C as a stop request; a signal here would stop one rank alone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    launch = json.loads(Path(argv[0]).read_text())
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    config = resolve_run(launch["config"])
    cuda = resolve_device(config.train.device).type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)
    torch.set_num_threads(int(launch["threads"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    conn = Client(launch["address"], family="AF_UNIX",
                  authkey=bytes.fromhex(os.environ[AUTHKEY_ENV]))
    channel = ConnectionChannel(conn, on_stop=distributed.request_stop)
    run_dir = Path(launch["run_dir"])
    if rank == 0:
        outcome = train(config, run_id=launch["run_id"], run_dir=run_dir,
                        sink=RemoteStore(channel, run_dir.parent.parent),
                        callbacks=[RelayCallback(channel)])
    else:
        outcome = train(config, run_id=launch["run_id"], run_dir=run_dir, sink=DiscardSink())
    channel.post(("outcome", rank, outcome))
    conn.close()
    if outcome.status in ("failed", "oom"):
        return 1  # torchrun then stops the ranks that still wait for this one
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
