"""Subcommands of this area (registered by omnitrain.cli): `train`, `data synth|shapes|pack|encode` and
`checkpoint consolidate`."""

from __future__ import annotations

import argparse
import os
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this area's subcommands; imports of heavy modules happen inside the handlers."""
    train = subparsers.add_parser("train", help="Run training from a TrainerConfig (YAML/JSON); torchrun-aware.")
    train.add_argument("--config", required=True, help="TrainerConfig file (the operator's ConfigMap).")
    train.set_defaults(func=_train)

    data = subparsers.add_parser("data", help="Dataset tools.")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    synth = data_sub.add_parser("synth", help="Write a synthetic dataset of pre-encoded samples as Parquet shards.")
    synth.add_argument("--out", required=True, help="Folder for shard-*.parquet.")
    synth.add_argument("--samples", type=int, default=256)
    synth.add_argument("--shards", type=int, default=4)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--max-frames", type=int, default=4, help="Longest clip in latent frames.")
    synth.add_argument("--max-side", type=int, default=8, help="Longest latent side.")
    synth.add_argument("--preset", default="tiny", help="Model preset whose latent channels/text width to use.")
    synth.set_defaults(func=_synth)

    shapes = data_sub.add_parser(
        "shapes", help="Render a folder of real MP4 clips with captions (shapes of named colours moving)."
    )
    shapes.add_argument("--out", required=True, help="Folder for <name>.mp4 + <name>.txt (+ .ref.png, .context.mp4).")
    shapes.add_argument("--clips", type=int, default=24)
    shapes.add_argument("--seed", type=int, default=0)
    shapes.set_defaults(func=_shapes)

    pack = data_sub.add_parser(
        "pack",
        help="Pack a folder of clips and captions into pre-shuffled raw Parquet shards (unreadable files skipped).",
    )
    pack.add_argument("folder", help="Clips <name>.mp4 with captions <name>.txt (see docs/data.md for the layout).")
    pack.add_argument("--out", required=True, help="A new folder for shard-*.parquet and dataset.json.")
    pack.add_argument("--shards", type=int, default=4)
    pack.add_argument("--seed", type=int, default=0, help="Seed of the shuffle.")
    pack.add_argument(
        "--store", choices=("bytes", "paths"), default="bytes", help="Clips inside the shards, or their paths."
    )
    pack.add_argument("--max-side", type=int, default=4096, help="Skip clips or images larger than this on a side.")
    pack.add_argument("--max-frames", type=int, default=2048, help="Skip clips with more frames.")
    pack.set_defaults(func=_pack)

    encode = data_sub.add_parser(
        "encode", help="Encode a raw dataset (data pack) with the frozen VAE and text encoder into encoded shards."
    )
    encode.add_argument("raw", help="A folder written by `omnitrain data pack`.")
    encode.add_argument("--out", required=True, help="A new folder for the encoded shard-*.parquet and dataset.json.")
    encode.add_argument(
        "--encoders", help="YAML/JSON of spec.data.encoders (VAE, text encoder, buckets); unset: defaults."
    )
    encode.add_argument(
        "--encoders-json", help="spec.data.encoders as a JSON string (the operator's pre-encoding Job)."
    )
    encode.add_argument(
        "--reuse",
        action="store_true",
        help="Exit 0 without encoding when --out holds a dataset these encoders made from this raw folder.",
    )
    encode.add_argument("--on-corrupt", choices=("skip", "fail"), default="skip")
    encode.set_defaults(func=_encode)

    checkpoint = subparsers.add_parser("checkpoint", help="Checkpoint tools.")
    checkpoint_sub = checkpoint.add_subparsers(dest="checkpoint_command", required=True, metavar="ACTION")
    consolidate = checkpoint_sub.add_parser(
        "consolidate", help="Write one checkpoint step folder (any layout) as a single torch.save file."
    )
    consolidate.add_argument("folder", help="A step folder, e.g. <persistentPath>/<job>/step-<N> (all ranks' files).")
    consolidate.add_argument("--out", required=True, help="The file to write (never overwritten).")
    consolidate.add_argument(
        "--model-only", action="store_true", help="Only the model's state dict (state['train']['model'])."
    )
    consolidate.set_defaults(func=_consolidate)


def _synth(args: argparse.Namespace) -> int:
    from omnitrain.model.config import resolve_model_config
    from omnitrain.trainer.data.synthetic import SynthSpec, write_synthetic

    for name in ("samples", "shards", "max_frames", "max_side"):
        if getattr(args, name) < 1:
            print(f"--{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    model = resolve_model_config(args.preset)
    write_synthetic(
        args.out,
        SynthSpec(
            samples=args.samples,
            shards=args.shards,
            seed=args.seed,
            max_frames=args.max_frames,
            max_side=args.max_side,
            latent_channels=model.latent_channels,
            text_dim=model.text_dim,
            patch_size=model.patch_size,
        ),
        log=lambda line: print(line, flush=True),
    )
    return 0


def _shapes(args: argparse.Namespace) -> int:
    from omnitrain.trainer.data.shapes import ShapesSpec, write_shapes

    if args.clips < 1:
        print("--clips must be at least 1", file=sys.stderr)
        return 2
    write_shapes(args.out, ShapesSpec(clips=args.clips, seed=args.seed), log=lambda line: print(line, flush=True))
    return 0


def _pack(args: argparse.Namespace) -> int:
    from omnitrain.media.video import MediaLimits
    from omnitrain.trainer.data.pack import PackError, PackSpec, pack_folder

    spec = PackSpec(
        shards=args.shards,
        seed=args.seed,
        store=args.store,
        limits=MediaLimits(max_side=args.max_side, max_frames=args.max_frames),
    )
    try:
        report = pack_folder(args.folder, args.out, spec, log=lambda line: print(line, flush=True))
    except PackError as error:
        print(f"data pack: {error}", file=sys.stderr)
        return 2
    print(f"data pack: {report.samples} samples in {len(report.shards)} shards, {len(report.skipped)} files skipped")
    return 0


def _encode(args: argparse.Namespace) -> int:
    import yaml
    from pydantic import ValidationError

    from omnitrain.encoders import EncoderError, Encoders
    from omnitrain.spec import EncodersSpec
    from omnitrain.trainer.data.encode import encode_dataset, made_by
    from omnitrain.trainer.data.reader import DataError

    try:
        text = args.encoders_json or (open(args.encoders).read() if args.encoders else "{}")
        spec = EncodersSpec.model_validate(yaml.safe_load(text) or {})
        if args.reuse and made_by(args.out, args.raw, spec):
            print(f"data encode: {args.out} already holds {args.raw} encoded by these encoders; reusing it")
            return 0
        encoders = Encoders.load(spec)
        report = encode_dataset(args.raw, args.out, encoders, args.on_corrupt, log=lambda line: print(line, flush=True))
    except (OSError, yaml.YAMLError, ValidationError, EncoderError, DataError, ValueError) as error:
        print(f"data encode: {error}", file=sys.stderr)
        return 2
    print(f"data encode: {report.samples} samples in {len(report.shards)} shards, {len(report.skipped)} skipped")
    return 0


def _consolidate(args: argparse.Namespace) -> int:
    from omnitrain.trainer.checkpoint.consolidate import consolidate
    from omnitrain.trainer.checkpoint.manifest import CheckpointError

    try:
        done = consolidate(args.folder, args.out, model_only=args.model_only)
    except (CheckpointError, OSError) as error:
        print(f"checkpoint consolidate: {error}", file=sys.stderr)
        return 2
    print(
        f"checkpoint consolidate: step {done.step}, {done.tensors} tensors, "
        f"{done.bytes_written / 2**20:.1f} MiB in {done.out}"
    )
    return 0


def _train(args: argparse.Namespace) -> int:
    from omnitrain.contract import PREEMPTED_REASON, ExitCode, TerminationMessage, write_termination_message
    from omnitrain.trainer.config_io import ConfigError, load_trainer_config

    try:
        config = load_trainer_config(args.config)
    except ConfigError as error:
        print(f"omnitrain train: {error}", file=sys.stderr, flush=True)
        write_termination_message(TerminationMessage(reason="ConfigError", message=str(error)[:1000]))
        return ExitCode.CONFIG

    import torch.distributed as dist

    from omnitrain.trainer.data.reader import DataError
    from omnitrain.trainer.train import TrainConfigError, train

    try:
        result = train(config)
    except (DataError, TrainConfigError) as error:
        print(f"omnitrain train: {error}", file=sys.stderr, flush=True)
        write_termination_message(TerminationMessage(reason="ConfigError", message=str(error)[:1000]))
        return ExitCode.CONFIG
    except Exception as error:
        refused = storage_termination_for(error, config.spec)
        if refused is not None:  # the disk's doing, not the job's: a restart would fail the same way
            print(f"omnitrain train: {refused.message}", file=sys.stderr, flush=True)
            write_termination_message(refused)
            return ExitCode.STORAGE
        write_termination_message(TerminationMessage(reason="Error", message=f"{type(error).__name__}: {error}"[:1000]))
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # one writer per pod: rank 0's message carries the goodput
        write_termination_message(
            TerminationMessage(
                reason=PREEMPTED_REASON if result.stopped else "Completed",
                message=f"stopped on SIGTERM after step {result.step}" if result.stopped else "",
                step=result.step,
                goodput=result.goodput,
                checkpoint_step=result.checkpoint_step,
            )
        )
    return ExitCode.PREEMPTED if result.stopped else ExitCode.OK


def storage_termination_for(error: BaseException, spec):
    """The StorageError termination message when `error` is (or was raised from) a write the storage refused
    (omnitrain.contract.STORAGE_ERRNOS: full, quota, read-only, denied), naming the spec field that chose the path;
    None for any other error."""
    from omnitrain.contract import storage_oserror, storage_termination
    from omnitrain.spec import is_within

    refused = storage_oserror(error)
    if refused is None or refused.errno is None:
        return None
    path = str(refused.filename or spec.checkpoint.local_path)
    persistent = spec.checkpoint.persistent_root
    if persistent and is_within(path, persistent):
        field = "checkpoint.persistentPath"
    elif is_within(path, spec.data.path):
        field = "data.path"
    elif is_within(path, spec.checkpoint.local_path):
        field = "checkpoint.localPath"
    else:
        field = "the spec field that names it"
    return storage_termination(path, refused.errno, field)
