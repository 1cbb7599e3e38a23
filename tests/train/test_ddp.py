"""Training with DistributedDataParallel: two CPU processes (Gloo) started by ``torchrun``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch.distributed as dist

from .test_train import tiny

WORKER = textwrap.dedent("""
    import hashlib, json, os, sys
    import torch
    torch.set_num_threads(1)
    from torchqsm.train import config_from_dict, train

    config = config_from_dict(json.loads(sys.argv[1]))
    result = train(config, sys.argv[2], progress=False)
    digest = hashlib.sha256(b"".join(t.detach().contiguous().numpy().tobytes()
                                     for t in result.model.parameters())).hexdigest()
    rank = os.environ["RANK"]
    with open(os.path.join(sys.argv[3], f"rank{rank}.json"), "w") as handle:
        json.dump({"losses": list(result.losses), "weights": digest, "world_size": result.world_size}, handle)
""")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no Gloo backend")
def test_two_process_ddp_keeps_replicas_identical_and_draws_different_data(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER, encoding="utf-8")
    config = tiny(steps=3, checkpoint_every=3)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
               f"--master_port={_free_port()}", str(script), json.dumps(config), str(tmp_path / "run"),
               str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 and len(r["losses"]) == 3 for r in ranks)
    # gradients are averaged across the processes, so both replicas end with the same parameters
    # (not buffers: batch norm's running statistics see each rank's last batch; rank 0's are saved) ...
    assert ranks[0]["weights"] == ranks[1]["weights"]
    # ... while each rank draws its own batches (seed derived from the rank), so its losses differ
    assert ranks[0]["losses"] != ranks[1]["losses"]
    # rank 0 alone writes the log and the checkpoint
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3]
    assert (tmp_path / "run" / "checkpoint.pt").exists()
