"""`make bench`: where the main lesson's time goes, measured side by side on this machine.

    python -m captioning_course.bench [--build-dir build/bench]

1. Training, on the smoke profile's data slice: the lesson runs with features from a fresh
   on-disk cache (the profile's epochs). An epoch's time is the median of the epochs after
   the first, which also builds the graph; the extraction pass is reported on its own.
2. Captioning, with the captioner the cached run trained, on the same held-out images: the
   lesson's step-by-step loop (one image at a time, as `predict_caption` does, and a whole
   batch at once), the compiled batched greedy decoder and beam search, each in a process of
   its own, so that each peak memory is its own.

3. The same lesson at the full course's sizes (the rehearsal's: 299x299, width 512, batch 32)
   on FULL_SIZE_IMAGES images: a cached epoch against the extraction.
4. A scale curve: the cached pipeline (extraction, then epochs) on slices of SCALE_IMAGES
   images, each four times the last, with the time per image and the kernel's peak memory of
   each, to show what grows with the dataset.
5. The feature cache past memory, up to COCO's 16.3 GB on a played n1-standard-4 and
   persistent disk: the disk, the input pipeline and the training step (`bench_feature_cache`).
6. The Transformer lesson's decoding with and without its key/value cache at three caption
   lengths (`bench_kv_cache`).

Prints a table and writes BUILD_DIR/bench.json. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from captioning_course import (
    bench_feature_cache,
    bench_kv_cache,
    data_slice,
    parameters,
    profiles,
    runner,
)
from captioning_course.labs import run_definitions

LESSON = Path("solutions/image_captioning.ipynb")
DECODE_IMAGES = 32
DECODE_REPEATS = 5
BEAM_WIDTH = 3
DECODERS = ("loop", "loop_batch", "greedy_batched", "beam")
FULL_SIZE_IMAGES = 256
SCALE_IMAGES = (400, 1600, 6400)
# Short runs: two epochs (the first also builds the graph), a few images to score.
SHORT = {"EPOCHS": 2, "EVAL_IMAGES": 32}


class PeakMemory:
    """Samples the summed resident memory of this process's children while in use."""

    def __init__(self, interval_s: float = 0.2):
        self.interval_s, self.peak_bytes = interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            total = 0
            for child in psutil.Process().children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.peak_bytes = max(self.peak_bytes, total)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_lesson(build_dir: Path, parameters: dict[str, Any],
               profile: profiles.Profile = profiles.SMOKE, data_dir: Path = Path("data"),
               ) -> tuple[dict[str, Any], float]:
    """The lesson's record and the peak memory (MB) of its kernel, run under `profile`."""
    shutil.rmtree(build_dir, ignore_errors=True)  # a fresh feature cache: extraction is timed
    with PeakMemory() as memory:
        [result] = runner.run([LESSON], profile, data_dir, build_dir,
                              Path("sample_images"), extra_parameters=parameters)
    if result.status != "ok":
        raise SystemExit(f"error: the lesson failed in {build_dir}: {result.failure}")
    return result.metrics, memory.peak_bytes / 1e6


def steady_epoch_seconds(metrics: dict[str, Any]) -> float:
    return statistics.median(metrics["training"]["epoch_seconds"][1:])


def measure_decoder(decoder: str, captioner: Path, caption_length: int) -> dict[str, float]:
    """Captions per second of one decoder on DECODE_IMAGES held-out slice images."""
    import keras
    import numpy as np
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from captioning_course.decoding import CaptionDecoder

    encoder = keras.models.load_model(captioner / "encoder.keras")
    step_model = keras.models.load_model(captioner / "decoder_step.keras")
    vocabulary = json.loads((captioner / "vocabulary.json").read_text())
    size = encoder.input_shape[1]
    examples = tfds.load(data_slice.NAME, split="test",
                         data_dir="data").take(DECODE_IMAGES)
    images = np.stack([tf.image.resize(example["image"], (size, size)) / 255.0
                       for example in examples])
    features = encoder.predict_on_batch(images)

    fast = CaptionDecoder(
        lambda words, state, image_features: step_model([words, state, image_features]),
        lambda image_features: tf.zeros([tf.shape(image_features)[0],
                                         step_model.outputs[1].shape[-1]]),
        vocabulary=vocabulary, max_length=caption_length, models=[step_model])
    lesson = run_definitions(LESSON, ("choose_next", "decode"),
                             {"np": np, "tf": tf, "caption_length": caption_length})
    runs = {
        "loop": lambda: [lesson["decode"](f[None], step_model, vocabulary) for f in features],
        "loop_batch": lambda: lesson["decode"](features, step_model, vocabulary),
        "greedy_batched": lambda: fast.text(fast.greedy(features)),
        "beam": lambda: fast.text(fast.beam_search(features, BEAM_WIDTH)),
    }
    run = runs[decoder]
    run()  # builds the graphs
    repeats = 1 if decoder == "loop" else DECODE_REPEATS
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return {"captions_per_s": DECODE_IMAGES / statistics.median(seconds),
            "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3}


def decoder_in_own_process(decoder: str, captioner: Path, caption_length: int
                           ) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "captioning_course.bench", "--decoder", decoder,
         "--captioner", str(captioner), "--caption-length", str(caption_length)],
        capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: measuring the {decoder} decoder failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def full_sizes(build_dir: Path) -> dict[str, Any]:
    """Epoch and extraction times at the full course's sizes."""
    # The rehearsal's sizes, but Keras as it is on this CPU: timed, not played.
    profile = dataclasses.replace(profiles.REHEARSAL, plays_gpu=False)
    metrics = run_lesson(build_dir / "full-cached",
                         {**SHORT, "TRAIN_SPLIT": f"train[:{FULL_SIZE_IMAGES}]"}, profile)[0]
    epoch, extraction = steady_epoch_seconds(metrics), metrics["feature_cache"][
        "extraction_seconds"]
    return {"images": FULL_SIZE_IMAGES, "epoch_s": {"cached": epoch}, "extraction_s": extraction,
            "extraction_over_cached_epoch": extraction / epoch}


def scale_curve(build_dir: Path) -> dict[str, Any]:
    """The cached pipeline on ever larger slices: seconds per image and peak memory of each,
    and a straight line through the times (a cost per image, and a cost paid once a run)."""
    data_slice_params = data_slice.SliceParams(train=max(SCALE_IMAGES))
    profile = dataclasses.replace(profiles.SMOKE, data_slice=data_slice_params)
    curve = []
    for images in SCALE_IMAGES:
        metrics, peak = run_lesson(build_dir / f"scale-{images}",
                                   {**SHORT, "TRAIN_SPLIT": f"train[:{images}]"}, profile,
                                   build_dir / "scale-data")
        extraction = metrics["feature_cache"]["extraction_seconds"]
        curve.append({"images": images, "extraction_s": extraction,
                      "epoch_s": steady_epoch_seconds(metrics),
                      "extraction_ms_per_image": 1000 * extraction / images,
                      "epoch_ms_per_image": 1000 * steady_epoch_seconds(metrics) / images,
                      "peak_memory_mb": peak})
    images = [point["images"] for point in curve]
    fits = {}
    for step in ("extraction", "epoch"):
        per_image, once = np.polyfit(images, [point[f"{step}_s"] for point in curve], 1)
        fits[step] = {"ms_per_image": 1000 * per_image, "once_s": once}
    return {"points": curve, "fit": fits}


def bench(build_dir: Path) -> dict[str, Any]:
    bench_feature_cache.require_cgroups()  # before half an hour of other measurements
    cached_metrics, cached_peak = run_lesson(build_dir / "cached", {})
    output_dir = build_dir / "cached" / profiles.SMOKE.name / LESSON.stem
    cache = cached_metrics["feature_cache"]
    decoders = {name: decoder_in_own_process(name, output_dir / "captioner",
                                             cached_metrics["caption_length"]["tokens"])
                for name in DECODERS}
    return {
        "machine": {"cpus": psutil.cpu_count(), "python": platform.python_version(),
                    "gpu": parameters.gpu_visible()},
        "captions_per_s": {name: result["captions_per_s"] for name, result in decoders.items()},
        "epoch_s": {"cached": steady_epoch_seconds(cached_metrics)},
        "extraction_s": cache["extraction_seconds"],
        "extract_images_per_s": cache["images"] / cache["extraction_seconds"],
        "feature_cache_mb": cache["size_mb"],
        "peak_memory_mb": {**{name: r["peak_memory_mb"] for name, r in decoders.items()},
                           "lesson_cached": cached_peak},
        "lesson_seconds": {"cached": cached_metrics["seconds"]},
        "decode_images": DECODE_IMAGES,
        "full_sizes": full_sizes(build_dir),
        "scale": scale_curve(build_dir),
        "feature_cache_past_memory": bench_feature_cache.bench(build_dir),
        "kv_cache": bench_kv_cache.bench(),
    }


def table(results: dict[str, Any]) -> str:
    rate, epochs, peak = (results[k] for k in ("captions_per_s", "epoch_s", "peak_memory_mb"))
    rows = [
        ("captions/s, step-by-step loop, one image at a time", rate["loop"], peak["loop"]),
        ("captions/s, step-by-step loop, batch of 32", rate["loop_batch"], peak["loop_batch"]),
        ("captions/s, compiled greedy, batch of 32", rate["greedy_batched"],
         peak["greedy_batched"]),
        (f"captions/s, compiled beam search (width {BEAM_WIDTH})", rate["beam"], peak["beam"]),
        ("s per epoch, features from the disk cache", epochs["cached"], peak["lesson_cached"]),
        ("images/s, feature extraction", results["extract_images_per_s"], None),
    ]
    lines = [f"{'measurement':55} {'value':>9} {'peak MB':>8}"]
    lines += [f"{name:55} {value:9.2f} {'' if mb is None else f'{mb:8.0f}'}"
              for name, value, mb in rows]
    lines.append(f"compiled greedy vs loop: {rate['greedy_batched'] / rate['loop']:.0f}x")
    full = results["full_sizes"]
    lines.append(f"at full sizes ({full['images']} images, 299x299): a cached epoch takes "
                 f"{full['epoch_s']['cached']:.2f} s, the extraction {full['extraction_s']:.1f} s "
                 f"({full['extraction_over_cached_epoch']:.0f} epochs)")
    lines.append(f"{'scale: images':20} {'extraction ms/image':>20} {'epoch ms/image':>15} "
                 f"{'peak MB':>8}")
    lines += [f"{point['images']:20} {point['extraction_ms_per_image']:20.1f} "
              f"{point['epoch_ms_per_image']:15.2f} {point['peak_memory_mb']:8.0f}"
              for point in results["scale"]["points"]]
    fit = results["scale"]["fit"]
    lines.append("a straight line through them: " + "; ".join(
        f"{step} {fit[step]['ms_per_image']:.2f} ms per image + {fit[step]['once_s']:.1f} s once"
        for step in ("extraction", "epoch")))
    lines.append(bench_feature_cache.table(results["feature_cache_past_memory"]))
    lines.append(bench_kv_cache.table(results["kv_cache"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-dir", type=Path, default=Path("build/bench"))
    parser.add_argument("--decoder", choices=DECODERS, help=argparse.SUPPRESS)
    parser.add_argument("--captioner", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--caption-length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.decoder:  # one measurement, in a process of its own
        print(json.dumps(measure_decoder(args.decoder, args.captioner, args.caption_length)))
        return 0
    results = bench(args.build_dir)
    print(table(results))
    output = args.build_dir / "bench.json"
    output.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
