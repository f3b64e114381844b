"""Caption photos with a captioner exported by a lesson, from a terminal.

    python -m captioning_course.caption outputs/captioner_export photo.jpg [photo.png ...]

The export is a SavedModel whose `serve` function takes encoded photos and returns their
captions; it is loaded with `tensorflow_hub.load`, as anyone who receives it would. Each photo
is read with the course's `read_image` (upright from its EXIF orientation, transparency on
white, 16-bit scaled, WebP, TIFF and HEIC too) and handed over as PNG bytes, so the export sees
the pixels the lesson's captioner saw. Prints one `photo: caption` line per photo; a photo that
cannot be read gets an `error:` line and the others are still captioned.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

SAVED_MODEL_FILE = "saved_model.pb"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="a lesson's captioner export")
    parser.add_argument("photos", nargs="+", type=Path)
    args = parser.parse_args(argv)
    if not (args.model_dir / SAVED_MODEL_FILE).is_file():
        print(f"error: {args.model_dir} is not an exported captioner: it has no "
              f"{SAVED_MODEL_FILE} (a lesson writes one to OUTPUT_DIR/captioner_export)",
              file=sys.stderr)
        return 2

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    import tensorflow as tf
    import tensorflow_hub as hub

    from captioning_course.images import read_image

    readable, failed = [], 0
    for photo in args.photos:
        try:
            readable.append((photo, tf.io.encode_png(read_image(photo)).numpy()))
        except (OSError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            failed += 1
    if readable:
        captioner = hub.load(str(args.model_dir))
        captions = captioner.serve(tf.constant([png for _, png in readable])).numpy()
        for (photo, _), caption in zip(readable, captions, strict=True):
            print(f"{photo}: {caption.decode()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
