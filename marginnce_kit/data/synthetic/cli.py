"""``python -m marginnce_kit.data.synthetic``: write a data set (a preset, with overrides)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from .cache import ensure_dataset
from .config import PRESETS
from .writer import generate


def main(argv: Sequence[str] | None = None) -> int:
    from ...cli import make_parser

    parser = make_parser("marginnce_kit.data.synthetic",
                         "Write the embedded audio-visual localisation data set (VGG-SS layout).")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: the hash-keyed cache)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--num-train", type=int, default=None)
    parser.add_argument("--num-test", type=int, default=None)
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--num-val", type=int, default=None, help="validation clips (EmbeddedConfig.num_val)")
    parser.add_argument("--faulty-positive-rate", type=float, default=None)
    parser.add_argument("--snr-db", type=float, default=None)
    parser.add_argument("--center-bias", "--centre-bias", dest="centre_bias", type=float, default=None,
                        help="pull of the sounding box towards the frame center (EmbeddedConfig.centre_bias)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it holds something else")
    args = parser.parse_args(argv)
    changes = {
        k: v
        for k, v in {
            "seed": args.seed,
            "num_train": args.num_train,
            "num_test": args.num_test,
            "num_classes": args.num_classes,
            "num_val": args.num_val,
            "faulty_positive_rate": args.faulty_positive_rate,
            "snr_db": args.snr_db,
            "centre_bias": args.centre_bias,
        }.items()
        if v is not None
    }
    config = PRESETS[args.preset].replace(**changes)
    t0 = time.perf_counter()
    if args.out is None:
        path = ensure_dataset(config=config, workers=args.workers)
    else:
        path = generate(args.out, config, workers=args.workers, overwrite=args.overwrite)
    print(f"{path} ({config.num_train} train / {config.num_test} test clips, {time.perf_counter() - t0:.1f} s)")
    return 0
