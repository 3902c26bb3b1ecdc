"""Asynchronous sharded checkpoints on node-local disk, replicated to persistent storage, with exact resume.

Modules: manifest (what makes a checkpoint complete), flatten + staging (tensors into reusable shared host
buffers), save (one rank's save procedure), writer (the background process), retention, restore (discovery,
fallback, resharding), checkpointer (the front end), rng, callback (the training-loop hooks); below the trainer,
because serving and promotion read them too: omnitrain.checkpoint_paths (folder layout) and omnitrain.fsio
(durable writes, checksums). See docs/checkpointing.md.
"""

from omnitrain.trainer.checkpoint.checkpointer import CheckpointConfig, Checkpointer, CheckpointSaveError
from omnitrain.trainer.checkpoint.manifest import (
    CheckpointError,
    CheckpointMismatchError,
    Manifest,
    WorldLayout,
    model_fingerprint,
)
from omnitrain.trainer.checkpoint.restore import LayoutChangeError, RestoredCheckpoint
from omnitrain.trainer.checkpoint.rng import capture_rng_state, restore_rng_state

__all__ = [
    "CheckpointConfig",
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointSaveError",
    "Checkpointer",
    "LayoutChangeError",
    "Manifest",
    "RestoredCheckpoint",
    "WorldLayout",
    "capture_rng_state",
    "model_fingerprint",
    "restore_rng_state",
]
