"""`make bench`'s feature cache past memory: the disk, the main lesson's input pipeline and its
training step, on caches of the real cache's shape, up to COCO's full size.

The full main lesson caches 82,783 grids of 8x8x1536 float16 features, 16.3 GB, and a T4 on
Workbench comes on an N1 machine, most often an n1-standard-4 with 15 GB of memory: there the
cache does not fit in the page cache, and every epoch reads it from disk. This machine has
more memory and a faster disk, so each measurement runs in a process that cgroup v1 (as root)
holds to MEMORY_LIMIT_GB of memory, the page cache it fills included, and to EMULATED_DISK's
read rate; the largest cache is also read at this machine's own disk rate.

Synthetic features (no CNN, so they are quick to write) go through the cache's own writer
(`features.cached_features`: its shards and manifest) and are read back by its own reader and
the main lesson's `make_batches`, taken from the solution. Measured, side by side:

- the raw sequential read rate of the disk: direct I/O, 16 MB at a time, no page cache;
- the pipeline's rate (read, parse, shuffle, tokenise, batch), from disk (after dropping the
  page cache) and on a second pass, at three cache sizes, with its peak resident memory;
- an epoch of the main lesson's training step (`captioner.build_captioner` at the full
  defaults) fed by the pipeline from disk, against the same epoch fed from memory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LESSON = Path("solutions/image_captioning.ipynb")
COCO_TRAIN_IMAGES = 82_783
SIZES = (COCO_TRAIN_IMAGES // 16, COCO_TRAIN_IMAGES // 4, COCO_TRAIN_IMAGES)
GRID = (8, 8, 1536)  # InceptionResNetV2 at 299x299
MEMORY_LIMIT_GB = 15  # an n1-standard-4's memory
# The disk played: Google Cloud's zonal SSD persistent disk reads 0.48 MiB/s per GiB
# (cloud.google.com/compute/docs/disks/performance), 240 MiB/s at 500 GiB.
EMULATED_DISK = {"type": "pd-ssd", "size_gib": 500, "mib_s_per_gib": 0.48}
EMULATED_DISK_BYTES_PER_S = int(EMULATED_DISK["mib_s_per_gib"] * EMULATED_DISK["size_gib"] * 2**20)
CONTROLLERS = ("memory", "blkio")
BATCH_SIZE = 32
SHUFFLE_BUFFER = 1000  # the main lesson's default
# The full defaults the training step is built with; the caption length is assumed.
VOCAB_SIZE, CAPTION_LENGTH, WIDTH = 20000, 32, 512
RAW_BLOCK = 16 * 2**20
CAPTIONS = ["a man riding a wave on top of a surfboard", "a dog runs across the grass",
            "two people stand next to a red bus", "a plate of food with broccoli",
            "a cat sleeping on a laptop keyboard"]


def write_cache(folder: Path, images: int):
    """A cache of `images` synthetic grids, each with five captions, by the cache's writer."""
    import numpy as np
    import tensorflow as tf

    from captioning_course.features import cached_features

    grids = np.random.default_rng(0).standard_normal((BATCH_SIZE, *GRID)).astype(np.float16)
    example = {"image": tf.zeros((1, 1, 3)), "captions": tf.constant(CAPTIONS)}
    examples = tf.data.Dataset.from_tensors(example).repeat(images)
    return cached_features(examples, lambda batch: grids[:len(batch)], name=f"grids-{images}",
                           key={"synthetic": images, "grid": GRID}, folder=folder,
                           batch_size=BATCH_SIZE, total=images, description="synthetic grids")


def drop_page_cache() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def raw_read_mb_s(cache: Path) -> float:
    """Sequential direct-I/O read rate of the cache's shards, bypassing the page cache."""
    buffer = mmap.mmap(-1, RAW_BLOCK)  # page-aligned, as O_DIRECT needs
    total, start = 0, time.perf_counter()
    for shard in sorted(cache.glob("shard-*.tfrecord")):
        fd = os.open(shard, os.O_RDONLY | os.O_DIRECT)
        try:
            while (read := os.readv(fd, [buffer])) > 0:
                total += read
        finally:
            os.close(fd)
    return total / (time.perf_counter() - start) / 1e6


def lesson_batches(cached):
    """The main lesson's training batches over `cached`, by its own functions."""
    import tensorflow as tf
    from keras import layers

    from captioning_course.labs import run_definitions

    lesson = run_definitions(LESSON, ("add_start_end", "features_and_captions",
                                      "pick_one_caption", "create_ds_fn", "make_batches"),
                             {"tf": tf, "BATCH_SIZE": BATCH_SIZE})
    # create_ds_fn reads the lesson's tokenizer as a global, adapted as the lesson adapts it.
    lesson["tokenizer"] = layers.TextVectorization(max_tokens=VOCAB_SIZE,
                                                   output_sequence_length=CAPTION_LENGTH)
    lesson["tokenizer"].adapt(lesson["add_start_end"](tf.constant(CAPTIONS)))
    return lesson["make_batches"](cached.dataset, lesson["features_and_captions"],
                                  SHUFFLE_BUFFER)


def pass_mb_s(batches, size_bytes: int) -> float:
    start = time.perf_counter()
    for _ in batches:
        pass
    return size_bytes / (time.perf_counter() - start) / 1e6


def epoch_seconds(batches) -> dict[str, float]:
    """An epoch of the main lesson's training step fed from disk, then fed from memory."""
    import keras

    from captioning_course.captioner import build_captioner
    from captioning_course.training import masked_loss

    model = build_captioner(VOCAB_SIZE, CAPTION_LENGTH, GRID, WIDTH).training_model
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=masked_loss)
    model.fit(batches.take(2), verbose=0)  # builds the graph

    def timed_epoch() -> float:
        start = time.perf_counter()
        model.fit(batches, verbose=0)
        return time.perf_counter() - start

    drop_page_cache()
    from_disk = timed_epoch()
    return {"disk": from_disk, "memory": timed_epoch()}  # the cache is now in the page cache


def measure(cache: Path, with_epoch: bool) -> dict[str, Any]:
    """Every rate of one cache, in this process; run it inside the cgroup."""
    from captioning_course.feature_shards import open_cache

    cached = open_cache(cache)
    drop_page_cache()
    result = {"images": cached.examples, "size_gb": cached.size_bytes / 1e9,
              "raw_disk_mb_s": raw_read_mb_s(cache)}
    batches = lesson_batches(cached)
    drop_page_cache()
    result["pipeline_from_disk_mb_s"] = pass_mb_s(batches, cached.size_bytes)
    result["pipeline_second_pass_mb_s"] = pass_mb_s(batches, cached.size_bytes)
    if with_epoch:
        result["epoch_s"] = epoch_seconds(batches)
    result["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    return result


def block_device(path: Path) -> str:
    """"MAJOR:MINOR" of the disk holding `path` (the whole disk, not a partition)."""
    device = os.stat(path).st_dev
    node = Path(f"/sys/dev/block/{os.major(device)}:{os.minor(device)}")
    if not node.exists():
        raise SystemExit(f"error: {path} is on no block device (an overlay or network "
                         "filesystem?), so its reads cannot be held to a persistent disk's rate")
    if (node / "partition").exists():
        node = node.resolve().parent
    return (node / "dev").read_text().strip()


def require_cgroups() -> None:
    if os.geteuid() != 0 or not all(Path(f"/sys/fs/cgroup/{c}").is_dir() for c in CONTROLLERS):
        raise SystemExit("error: the feature cache bench plays an N1 machine with cgroup v1's "
                         "memory and blkio controllers: run `make bench` as root on a machine "
                         "with /sys/fs/cgroup/memory and /sys/fs/cgroup/blkio")


@contextlib.contextmanager
def emulated_machine(device: str, read_bytes_per_s: int | None) -> Iterator[list[Path]]:
    """cgroup v1 groups that hold their processes to MEMORY_LIMIT_GB of memory (page cache
    included) and, given `read_bytes_per_s`, to that read rate from `device`."""
    require_cgroups()
    settings = {"memory": {"memory.limit_in_bytes": str(MEMORY_LIMIT_GB * 10**9)},
                "blkio": {} if read_bytes_per_s is None else
                {"blkio.throttle.read_bps_device": f"{device} {read_bytes_per_s}"}}
    groups = []
    try:
        for controller in CONTROLLERS:
            group = Path(f"/sys/fs/cgroup/{controller}/captioning-course-bench")
            group.mkdir(exist_ok=True)  # left by a run that was killed
            groups.append(group)
            for name, value in settings[controller].items():
                (group / name).write_text(value)
        yield groups
    finally:
        for group in groups:
            group.rmdir()  # its processes have ended


def measure_in(groups: list[Path], cache: Path, with_epoch: bool) -> dict[str, Any]:
    """`measure` in a process of its own that joins `groups` before it reads anything."""
    command = [sys.executable, "-m", "captioning_course.bench_feature_cache", str(cache)]
    command += [argument for group in groups for argument in ("--join", str(group))]
    done = subprocess.run(command + (["--epoch"] if with_epoch else []),
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: measuring the cache in {cache} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def bench(build_dir: Path) -> dict[str, Any]:
    folder = build_dir / "feature_cache_past_memory"
    folder.mkdir(parents=True, exist_ok=True)
    device = block_device(folder)
    emulated, local = [], None
    for images in SIZES:
        cached = write_cache(folder, images)
        with emulated_machine(device, EMULATED_DISK_BYTES_PER_S) as groups:
            emulated.append(measure_in(groups, cached.path, with_epoch=images == SIZES[0]))
        if images == SIZES[-1]:
            with emulated_machine(device, None) as groups:
                local = measure_in(groups, cached.path, with_epoch=False)
        shutil.rmtree(cached.path)  # synthetic, and the largest is 16 GB
    largest = emulated[-1]
    return {
        "memory_limit_gb": MEMORY_LIMIT_GB,
        "emulated_disk": {**EMULATED_DISK, "read_mb_s": EMULATED_DISK_BYTES_PER_S / 1e6},
        "raw_disk_mb_s": {"emulated": largest["raw_disk_mb_s"],
                          "this_machine": local["raw_disk_mb_s"]},
        "pipeline_from_disk_mb_s": {"emulated": largest["pipeline_from_disk_mb_s"],
                                    "this_machine": local["pipeline_from_disk_mb_s"]},
        "pipeline_share_of_raw": {
            disk: rates["pipeline_from_disk_mb_s"] / rates["raw_disk_mb_s"]
            for disk, rates in (("emulated", largest), ("this_machine", local))},
        "pipeline_from_page_cache_mb_s": emulated[0]["pipeline_second_pass_mb_s"],
        "epoch_s": emulated[0]["epoch_s"],
        "epoch_images": emulated[0]["images"],
        "points": emulated,
    }


def table(results: dict[str, Any]) -> str:
    raw, pipeline, share = (results[key] for key in (
        "raw_disk_mb_s", "pipeline_from_disk_mb_s", "pipeline_share_of_raw"))
    disk = results["emulated_disk"]
    lines = [f"feature cache past memory, reads held to {results['memory_limit_gb']} GB:",
             f"{'disk':34} {'raw MB/s':>9} {'pipeline MB/s':>14} {'share':>6}"]
    for name, label in (("emulated", f"{disk['type']} {disk['size_gib']} GiB (played)"),
                        ("this_machine", "this machine's own")):
        lines.append(f"{label:34} {raw[name]:9.0f} {pipeline[name]:14.0f} {share[name]:6.2f}")
    lines.append(f"the pipeline from the page cache: "
                 f"{results['pipeline_from_page_cache_mb_s']:.0f} MB/s")
    lines.append(f"{'images':>8} {'GB':>6} {'from disk MB/s':>15} {'2nd pass MB/s':>14} "
                 f"{'peak MB':>8}")
    lines += [f"{p['images']:8} {p['size_gb']:6.1f} {p['pipeline_from_disk_mb_s']:15.0f} "
              f"{p['pipeline_second_pass_mb_s']:14.0f} {p['peak_memory_mb']:8.0f}"
              for p in results["points"]]
    epoch = results["epoch_s"]
    lines.append(f"an epoch of {results['epoch_images']} images: {epoch['disk']:.1f} s fed from "
                 f"disk, {epoch['memory']:.1f} s from memory")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """One cache's measurements, in a process that joins the given cgroups first."""
    parser = argparse.ArgumentParser()
    parser.add_argument("cache", type=Path)
    parser.add_argument("--join", type=Path, action="append", default=[])
    parser.add_argument("--epoch", action="store_true")
    args = parser.parse_args(argv)
    for group in args.join:
        (group / "cgroup.procs").write_text(str(os.getpid()))
    print(json.dumps(measure(args.cache, args.epoch)))


if __name__ == "__main__":
    main()
