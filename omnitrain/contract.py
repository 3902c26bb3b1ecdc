"""The contract between the training pods and the operator, in one place (shared/design.md, Boundaries).

The operator and the trainer meet only through: the CRD schema (omnitrain.spec), the ConfigMap the operator renders
(omnitrain.spec.TrainerConfig as YAML at CONFIG_PATH), and what a pod shows from outside: its exit code, its
termination message (one JSON line) and its Prometheus metrics. Pure Python, imported by both sides.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from pathlib import PurePosixPath

# The CRD's coordinates: the operator serves them, `omnitrain status` and the tests address jobs by them.
GROUP = "omnitrain.io"
VERSION = "v1alpha1"
KIND = "OmniTrainingJob"
PLURAL = "omnitrainingjobs"
SINGULAR = "omnitrainingjob"
SHORT_NAMES = ["otj"]
CATEGORIES = ["omnitrain", "all"]
API_VERSION = f"{GROUP}/{VERSION}"
CRD_NAME = f"{PLURAL}.{GROUP}"

CONFIG_MOUNT = "/etc/omnitrain"
CONFIG_FILE = "config.yaml"
CONFIG_PATH = f"{CONFIG_MOUNT}/{CONFIG_FILE}"

# Where promotion's artifacts live on the persistent claim: `omnitrain distill` writes the student there, the
# operator points the inference Deployment at it. Next to the job's step-<N> checkpoint folders, never inside one.
STUDENT_FILE = "student.pt"


def promotion_dir(persistent_path: str, job: str) -> str:
    """`<persistentPath>/<job>/promotion/`."""
    return str(PurePosixPath(persistent_path) / job / "promotion")


def student_path(persistent_path: str, job: str) -> str:
    """The distilled student written by `omnitrain distill` and served by `omnitrain serve`."""
    return str(PurePosixPath(promotion_dir(persistent_path, job)) / STUDENT_FILE)


# Where a container writes why it ended (Kubernetes' terminationMessagePath default).
TERMINATION_LOG_ENV = "OMNITRAIN_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"


class ExitCode(IntEnum):
    """Exit codes of a training pod's main container and what the operator does with them."""

    OK = 0  # training finished: the job may succeed
    ERROR = 1  # crash (Python exception, failed collective): gang restart
    CONFIG = 3  # bad config or data the trainer cannot use: restart will not help, the job fails
    NO_PROGRESS = 4  # resumed but cannot advance (e.g. every checkpoint unreadable): the job fails
    STORAGE = 5  # the checkpoint/metrics storage refused a write (full, quota, read-only, no permission): fails
    HANG = 42  # the watchdog found no step progress and no RDMA traffic: gang restart
    HARDWARE = 43  # GPU/NIC fault evidence (XID, ECC, link down): gang restart without this node
    PREEMPTED = 44  # SIGTERM (preemption, eviction, drain): a final checkpoint was written; resume, no restart spent
    SIGKILL = 137  # killed (OOM killer, eviction, node loss): gang restart


PERMANENT_EXIT_CODES = frozenset({ExitCode.CONFIG, ExitCode.NO_PROGRESS, ExitCode.STORAGE})
# Termination reasons that mean "restart will not help" whatever the exit code: under torchrun a worker's own code
# becomes torchrun's 1, so the reason the worker left in the termination log is what the operator can trust.
STORAGE_ERROR = "StorageError"
PERMANENT_REASONS = frozenset({STORAGE_ERROR})
# The termination reason of a pod whose workers stopped on SIGTERM after a final checkpoint (ExitCode.PREEMPTED; a
# worker's 44 is torchrun's 1, so the supervisor gives the pod the code back from this reason).
PREEMPTED_REASON = "Preempted"


@dataclass
class TerminationMessage:
    """What a container leaves in its termination log when it ends on purpose."""

    reason: str  # e.g. "Completed", "HangDetected", "ConfigError", "HardwareFault"
    message: str = ""
    step: int | None = None  # last completed training step
    checkpoint_step: int | None = None  # newest complete checkpoint
    evidence: dict = field(default_factory=dict)
    goodput: dict | None = None  # the job's goodput at the end (GoodputReport.to_status), rank 0's pod only
    generation: int | None = None  # the restart generation the pod's workers ran in (in-place restarts)

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v not in (None, {}, "")}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> TerminationMessage | None:
        """Parse a pod's termination message; None when absent or not ours (e.g. a plain Python traceback)."""
        if not text:
            return None
        try:
            data = json.loads(text.strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            return None
        if not isinstance(data, dict) or "reason" not in data:
            return None
        known = {
            k: data[k]
            for k in ("reason", "message", "step", "checkpoint_step", "evidence", "goodput", "generation")
            if k in data
        }
        return cls(**known)


def write_termination_message(msg: TerminationMessage, path: str | None = None) -> None:
    """Best effort: a pod without a writable termination log still exits with the right code."""
    target = path or os.environ.get(TERMINATION_LOG_ENV, DEFAULT_TERMINATION_LOG)
    try:
        with open(target, "w") as f:
            f.write(msg.to_json() + "\n")
    except OSError:
        pass


# A write refused for one of these is the disk's or the mount's doing: the same write fails again after a restart
# (from the same checkpoint, onto the same disk), so the job fails at once and says what to fix.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
_STORAGE_FIXES = {
    errno.ENOSPC: "free space on {path} (or lower checkpoint.keep) or point {field} at a bigger disk",
    errno.EDQUOT: "raise the quota of {path}, free space there (or lower checkpoint.keep) or point {field} elsewhere",
    errno.EROFS: "{path} is read-only: mount it read-write or point {field} at a writable folder",
    errno.EACCES: "give the pod's user write access to {path} (e.g. securityContext.fsGroup) or point {field} "
    "at a folder it may write",
    errno.EPERM: "give the pod's user write access to {path} (e.g. securityContext.fsGroup) or point {field} "
    "at a folder it may write",
}


def storage_oserror(exc: BaseException | None) -> OSError | None:
    """The OSError with a STORAGE_ERRNOS errno that `exc` is or was raised from (its __cause__/__context__
    chain), or None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def storage_termination(path: str, err_no: int, field: str = "checkpoint.localPath") -> TerminationMessage:
    """The termination message of a pod whose storage refused a write: the path, the error by name and the fix.
    `field`: the spec field that chose the path (checkpoint.localPath or checkpoint.persistentPath)."""
    name = errno.errorcode.get(err_no, str(err_no))
    fix = _STORAGE_FIXES.get(err_no, "check the storage at {path} or point {field} elsewhere")
    return TerminationMessage(
        reason=STORAGE_ERROR,
        message=f"cannot write {path}: {name} ({os.strerror(err_no)}); restarting will not help: "
        + fix.format(path=path, field=field),
        evidence={"path": path, "errno": name},
    )


# Prometheus metric names the operator reads from rank 0's metrics endpoint to fill status.
METRIC_STEP = "omnitrain_train_step"
METRIC_TOTAL_STEPS = "omnitrain_train_total_steps"
METRIC_LAST_CHECKPOINT_STEP = "omnitrain_checkpoint_last_complete_step"
METRIC_LOSS = "omnitrain_train_loss"
METRIC_GOODPUT = "omnitrain_goodput_ratio"
METRIC_BADPUT = "omnitrain_badput_seconds"  # label cause: omnitrain.resilience.goodput.BADPUT_CAUSES
# The restart generation rank 0 trains in (= OMNITRAIN_ATTEMPT; in-place restarts: omnitrain.gang): a scrape tells
# which generation the numbers beside it come from, and that the announced one has reached training.
METRIC_GENERATION = "omnitrain_restart_generation"

# Environment the operator sets on every training pod (besides torchrun's MASTER_ADDR/PORT, PET_*).
ENV_JOB_NAME = "OMNITRAIN_JOB_NAME"
ENV_ATTEMPT = "OMNITRAIN_ATTEMPT"
ENV_METRICS_PORT = "OMNITRAIN_METRICS_PORT"
ENV_POD_IP = "POD_IP"
ENV_NODE_NAME = "NODE_NAME"

# The address servers in a pod listen on when not told (`omnitrain serve --host`). Unset in a real pod: 0.0.0.0, the
# pod's own network namespace, where Services, probes and port-forward reach it. The local node agent sets it to
# the pod's loopback IP: its pods share the machine's network, where 0.0.0.0 would be every interface it has.
ENV_BIND_HOST = "OMNITRAIN_BIND_HOST"
# A cluster without DNS for pods (the local node agent) lists pod DNS names -> IPs in this file ("<ip> <name>..."
# per line, /etc/hosts style) for the processes that look names up at run time (the supervisor's rendezvous address).
ENV_HOSTS_FILE = "OMNITRAIN_HOSTS_FILE"
