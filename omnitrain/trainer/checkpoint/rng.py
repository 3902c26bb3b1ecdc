"""Random number generator states of one process (torch CPU, CUDA when present, numpy, Python's random).

Restoring them makes dropout, noise and timestep sampling after a resume the same as in an uninterrupted run.
"""

from __future__ import annotations

import random

import torch


def capture_rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(_as_python_state(state["python"]))
    # Loaded tensors may view one shared storage at an offset (see staging); the generator setters want their
    # own contiguous storage, so hand them copies.
    torch.set_rng_state(state["torch"].clone())
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        # A resume on a different number of local devices restores the ones that exist.
        states = [s.clone() for s in state["cuda"][: torch.cuda.device_count()]]
        torch.cuda.set_rng_state_all(states)


def _as_python_state(value):
    # torch.load may give lists where random.getstate() had tuples.
    version, internal, gauss = value
    return (version, tuple(internal), gauss)
