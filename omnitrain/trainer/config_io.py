"""Read a TrainerConfig (YAML or JSON) and turn every problem into one message naming the field and the fix."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from omnitrain.spec import TrainerConfig, validate_job_spec


class ConfigError(ValueError):
    pass


def _field(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def load_trainer_config(path: str | Path) -> TrainerConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
    except OSError as error:
        raise ConfigError(f"--config: cannot read {path}: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"--config: {path} is not valid YAML/JSON: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"--config: {path} must hold a mapping with 'spec' and 'run'")
    try:
        config = TrainerConfig.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(f"{_field(e['loc'])}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"invalid trainer config {path}: {problems}") from error
    errors = validate_job_spec(config.spec)
    if errors:
        raise ConfigError(f"invalid trainer config {path}: " + "; ".join(str(e) for e in errors))
    return config
