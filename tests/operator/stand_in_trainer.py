"""What a training pod runs in the operator's e2e tests on the local cluster until `omnitrain train` is wired in:
reads the mounted config like the trainer does, records what it saw (env, config) in its node-local checkpoint
folder, and exits with the code a fault plan in that folder asks for (`{"<attempt>/<rank>": code}`; "storage": the
trainer's StorageError for a full disk, behind torchrun's exit 1)."""

import errno
import json
import os
import sys
from pathlib import Path

import yaml

from omnitrain.contract import CONFIG_PATH, TerminationMessage, storage_termination, write_termination_message

config = yaml.safe_load(Path(CONFIG_PATH).read_text())
rank, attempt = int(os.environ["PET_NODE_RANK"]), int(os.environ["OMNITRAIN_ATTEMPT"])
local = Path(config["spec"]["checkpoint"]["localPath"])
local.mkdir(parents=True, exist_ok=True)
(local / f"attempt{attempt}-rank{rank}.json").write_text(
    json.dumps(
        {
            "job": config["run"]["jobName"],
            "config_attempt": config["run"]["attempt"],
            "env": {
                k: os.environ.get(k)
                for k in (
                    "PET_NNODES",
                    "PET_NODE_RANK",
                    "PET_NPROC_PER_NODE",
                    "MASTER_ADDR",
                    "MASTER_PORT",
                    "WORLD_SIZE",
                    "POD_IP",
                    "NODE_NAME",
                )
            },
        }
    )
)
plan_file = local / "fault-plan.json"
code = json.loads(plan_file.read_text()).get(f"{attempt}/{rank}", 0) if plan_file.exists() else 0
if code == "storage":  # a full checkpoint disk as the trainer reports it; torchrun turns any worker's exit into 1
    write_termination_message(storage_termination(str(local), errno.ENOSPC))
    sys.exit(1)
if code:
    write_termination_message(TerminationMessage(reason="InjectedFault", message=f"rank {rank} exits {code}"))
sys.exit(code)
