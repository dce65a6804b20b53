"""`edge-ser features extract` and `edge-ser saliency`: FM hidden states -> cache -> CCS layer choice."""

from __future__ import annotations

from pathlib import Path

import click

from edge_ser.cli.options import (FiniteFloatRange, corpus_dir_option, model_names, one_line_errors, overwrite_option, progress_option,
                                  resume_option, engine_options)
from edge_ser.saliency import RULES, TARGET_SETS


def register(root: click.Group) -> None:
    root.add_command(features)
    root.add_command(saliency)


def _parse_layers(value: str | None) -> str | list[int] | None:
    if value is None or value == "all":
        return value
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}; expected 'all' or comma-separated layer numbers like 1,6,12.") from None


@click.group()
def features() -> None:
    """Feature caches: foundation-model hidden states or MFBF0 frames of a corpus."""


@features.command("extract")
@corpus_dir_option
@click.option("--model", type=click.Choice(model_names()), required=True,
              help="Foundation model from the registry, or mfbf0.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Cache folder.")
@click.option("--layers", default=None,
              help="Layers stored frame by frame: 'all' or e.g. '6' or '1,6,12'. Default: none "
                   "(only the pooled means of every layer, enough for saliency).")
@click.option("--weights", type=click.Path(exists=True, path_type=Path), default=None,
              help="Weights folder/file of the foundation model (default: the registry's source).")
@click.option("--random-init", is_flag=True, help="Random weights (tests, size and latency studies).")
@click.option("--seed", default=0, show_default=True, help="Seed of random weights.")
@click.option("--shard-utterances", type=click.IntRange(min=1), default=256, show_default=True,
              help="Utterances per shard file.")
@click.option("--batch-seconds", type=FiniteFloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="Most audio per batch of equal-length utterances.")
@click.option("--stream-hop", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="Store the hidden states a streaming artifact with this hop (seconds, e.g. 1.0) computes, not the "
                   "whole clip's: train a head on them for `edge-ser convert --stream-hop` (Whisper; docs/streaming.md).")
@click.option("--stream-context", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="With --stream-hop: the stream's context in seconds, the artifact's --window-s.  [default: 3.0]")
@resume_option("Continue an interrupted extraction with the same settings (its finished shards are kept), or start "
               "it over. A finished cache with the same settings is kept as is; one with other settings needs "
               "--overwrite.")
@overwrite_option
@engine_options("Where the shards run: this process, or Ray workers (pip install 'edge-ser[ray]'; "
                "docs/scale.md). Both write the same cache and resume each other's runs.")
@progress_option
@one_line_errors
def extract(corpus_dir: Path, model: str, out: Path, layers: str | None, weights: Path | None, random_init: bool,
            seed: int, shard_utterances: int, batch_seconds: float, stream_hop: float | None,
            stream_context: float | None, resume: bool, overwrite: bool, engine: str, address: str | None,
            workers: int | None, device: str | None, progress: bool) -> None:
    """Extract hidden states of every utterance into a feature cache folder."""
    common = dict(corpus_dir=corpus_dir, model=model, out=out, layers=_parse_layers(layers), weights=weights,
                  random_init=random_init, seed=seed, batch_seconds=batch_seconds,
                  shard_utterances=shard_utterances, resume=resume, overwrite=overwrite,
                  show_progress=progress)
    if stream_context is not None and stream_hop is None:
        raise click.UsageError("--stream-context only applies with --stream-hop; add --stream-hop (e.g. 1.0) or drop it.")
    if stream_hop is not None:
        if engine == "ray":
            raise click.UsageError("--stream-hop runs on the local engine only (stream features are not built for Ray "
                                   "workers; the local engine computes them at about 100x real time on one thread). "
                                   "Drop --engine ray.")
        from edge_ser.features.extract import StreamFeatures

        try:
            common["stream"] = StreamFeatures(hop_s=stream_hop, context_s=3.0 if stream_context is None else stream_context)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--stream-hop/--stream-context") from None
    if engine == "ray":
        from edge_ser.features.ray_engine import DEFAULT_RAY_WORKERS, extract_features_ray

        cache = extract_features_ray(**common, address=address, workers=workers or DEFAULT_RAY_WORKERS,
                                     device=device or "cpu")
    else:
        ray_only = [name for name, value in (("--address", address), ("--workers", workers), ("--device", device))
                    if value is not None]
        if ray_only:
            raise click.UsageError(f"{', '.join(ray_only)} only apply to --engine ray; add --engine ray or drop them.")
        from edge_ser.features.extract import extract_features

        cache = extract_features(**common)
    speed = cache.manifest["throughput"]
    click.echo(f"{cache.root}: {len(cache)} utterances, {cache.model}, {cache.n_layers + 1} pooled layers of "
               f"width {cache.hidden_size}, frame-level layers {list(cache.layers_stored)}")
    stream = cache.manifest.get("stream")
    if stream:
        click.echo(f"stream features: as a cached stream computes them, {stream['hop_s']:g} s hops, "
                   f"{stream['context_s']:g} s context")
    if speed.get("wall_s"):
        click.echo(f"throughput: {speed['utterances_per_s']:.2f} utterances/s, "
                   f"{speed['realtime_factor']:.1f}x real time ({speed['threads']} threads)")
    ray_run = cache.manifest["extraction"].get("engine")
    if ray_run and speed.get("wall_s"):
        where = {"local": "a local Ray instance started for this run",
                 "existing": "the Ray instance this process had joined"}.get(ray_run["connected"],
                                                                            f"the cluster at {ray_run['connected']}")
        click.echo(f"ray: {ray_run['workers']} workers on {where}, start-up {ray_run['startup_s']:.1f} s, "
                   f"{ray_run['shards_retried']} shard(s) retried after {ray_run['worker_deaths']} worker death(s)")


@click.command("saliency")
@click.option("--features", "features_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              required=True, help="Feature cache folder (edge-ser features extract).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for saliency.json and saliency.png.")
@click.option("--rule", type=click.Choice(list(RULES)), default="argmax", show_default=True,
              help="argmax of the layer score, or the earliest layer within --tolerance of the best.")
@click.option("--tolerance", type=FiniteFloatRange(min=0), default=0.01, show_default=True,
              help="Relative tolerance of earliest-within.")
@click.option("--max-utterances", type=click.IntRange(min=1), default=30_000, show_default=True,
              help="Random sample size (paper: 30K).")
@click.option("--seed", default=0, show_default=True, help="Sampling seed.")
@click.option("--split", default="train", show_default=True, help="Split to sample ('all' for every row).")
@click.option("--targets", type=click.Choice(list(TARGET_SETS)), default="all", show_default=True,
              help="all = A/V/D + 9 category probabilities; avd = the 3 dimensions.")
@click.option("--savings", is_flag=True, help="Also measure params/FLOPs/CPU time saved by cutting at k*.")
@click.option("--savings-model", type=click.Choice(model_names()), default=None,
              help="Registry model to measure savings on (default: the cache's model), e.g. wavlm-large.")
@overwrite_option
@progress_option
@one_line_errors
def saliency(features_dir: Path, out: Path, rule: str, tolerance: float, max_utterances: int, seed: int,
             split: str, targets: str, savings: bool, savings_model: str | None, overwrite: bool,
             progress: bool) -> None:
    """CCS layer saliency of a feature cache: score every layer, pick k*."""
    from edge_ser.features.cache import FeatureCache
    from edge_ser.saliency import SALIENCY_JSON, layer_saliency, save_saliency

    if (out / SALIENCY_JSON).is_file() and not overwrite:
        from edge_ser.output_folder import OutputExistsError

        raise OutputExistsError(
            f"{out} already holds a saliency result ({SALIENCY_JSON}); expected a new or empty folder. Pass "
            "--overwrite to replace it, or choose another --out."
        )

    cache = FeatureCache.open(features_dir)
    result = layer_saliency(cache, split=split, max_utterances=max_utterances, seed=seed, targets=targets,
                            rule=rule, tolerance=tolerance)
    save_saliency(result, out)
    click.echo(result.to_text())
    click.echo(f"wrote {out / 'saliency.json'} and {out / 'saliency.png'}")
    if savings:
        from edge_ser.fm.savings import truncation_savings

        from edge_ser.fm import get_spec

        name = savings_model or cache.model
        k = result.chosen_layer
        if get_spec(name).n_layers != cache.n_layers:
            raise click.UsageError(
                f"--savings-model {name} has {get_spec(name).n_layers} blocks but the cache's model {cache.model} "
                f"has {cache.n_layers}; layer {k} does not carry over. Pick a model with {cache.n_layers} blocks."
            )
        report = truncation_savings(name, k=k, random_init=True)
        click.echo(report.to_text())
