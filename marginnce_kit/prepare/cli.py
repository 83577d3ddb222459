"""``python -m marginnce_kit.prepare``: the command line of :func:`prepare` and :func:`verify`."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from pathlib import Path

from ..cli import HelpFormatter, UsageError, add_version, command_name, run_main
from ..data.acceptance import (
    MIN_AUDIO_SECONDS,
)
from ..layout import DEFAULT_FRAME_FORMAT, FRAME_FORMATS
from .ids import VGGSOUND_ID_PATTERN, read_ids, write_ids
from .run import REPORT_NAME, prepare
from .verify import verify
from .window import CLIP_SECONDS, WINDOW_MODES, WINDOW_TOLERANCE, WindowRule


class _HelpFormatter(HelpFormatter):
    """The kit's help (defaults shown, the description's line breaks kept), less ``(default: None)`` and
    ``(default: False)`` for options without a default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr and exit status 1."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(1, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = _Parser(
        prog=command_name("marginnce_kit.prepare"),
        formatter_class=_HelpFormatter,
        description=(
            "Extract the center frame (ROOT/frames/<id>.jpg, or .png with --frame-format png), turned as players\n"
            "show it (the video's display rotation), and 16 kHz mono audio (ROOT/audio/<id>.wav) of each clip\n"
            "from downloaded videos <id>.<ext>, or --verify a prepared split.\n\n"
            "Clip window: a VGGSound id <11-char YouTube id>_<start second, 6 digits> names the 10 s clip\n"
            "[start, start + 10) of a YouTube video. With --window auto, an untrimmed download (longer than\n"
            "--clip-seconds + --window-tolerance) is cut to that window; a trimmed one (or another id scheme)\n"
            "is used whole. A window past the end of its video, or that does not fit, is a failed clip.\n"
            "Each clip's window, frame time and rotation are in ROOT/prepare_report.json."
        ),
    )
    add_version(parser)
    parser.add_argument("--videos", type=Path, metavar="DIR", help="folder of downloaded videos <id>.<ext>")
    parser.add_argument("--out", type=Path, metavar="ROOT", help="output root (frames/, audio/, report)")
    parser.add_argument(
        "--verify", type=Path, metavar="ROOT",
        help="check the prepared clips of --ids under ROOT against the acceptance rule instead of preparing",
    )
    parser.add_argument(
        "--ids", type=Path, metavar="LIST",
        help="split file: one id per line (CSV first column) or a JSON list. When preparing: only these "
             "ids are prepared (a missing video is a failed clip); required with --verify",
    )
    parser.add_argument(
        "--write-clean", type=Path, metavar="CLEAN",
        help="with --verify: write the ids that pass, one per line in --ids order, to CLEAN",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, metavar="N",
                        help="worker processes (the default is this machine's CPU count)")
    parser.add_argument(
        "--audio-seconds", type=float, default=10.0, metavar="S",
        help=f"seconds of audio to keep, centered on the center frame (>= {MIN_AUDIO_SECONDS:g})",
    )
    parser.add_argument(
        "--window", choices=WINDOW_MODES, default="auto",
        help="clip window: 'auto' takes it from the id for videos longer than one clip and uses "
             "trimmed clips whole; 'from-id' always from the id; 'whole-file' never",
    )
    parser.add_argument(
        "--start-regex", default=VGGSOUND_ID_PATTERN, metavar="RE",
        help="regular expression matched against the whole id, with a named group (?P<start>...) in "
             "seconds and optionally (?P<end>...); e.g. '(?P<ytid>.{11})_(?P<start>\\d+)_(?P<end>\\d+)' "
             "for <ytid>_<start>_<end> ids",
    )
    parser.add_argument("--clip-seconds", type=float, default=CLIP_SECONDS, metavar="S",
                        help="window length when the id names only its start")
    parser.add_argument(
        "--window-tolerance", type=float, default=WINDOW_TOLERANCE, metavar="S",
        help="slack in seconds: 'auto' cuts a video only when it is longer than --clip-seconds + S; "
             "a window may overrun the video's end by at most S",
    )
    parser.add_argument(
        "--frame-size", type=int, default=None, metavar="PX",
        help="store frames with their shorter side resized to PX (bicubic; never enlarged); 246 = the "
             "training transform's resize for 224 inputs, so the loader skips it (default: full frames)",
    )
    parser.add_argument(
        "--frame-format", choices=FRAME_FORMATS, default=DEFAULT_FRAME_FORMAT,
        help="frame files: jpg (JPEG q95; EZ-VSL, SLAVC and LVS read .jpg) or png (lossless; FNAC's VGGSound "
             "loaders read .png). Recorded in ROOT/prepare_report.json: --verify and the kit's dataset read that "
             "format; a root holds one",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status.

    Prepare: 0 when the run completed (per-clip failures are in the report and the
    summary line).  Verify: 0 when every id is fine, 1 when some have problems.  User errors
    (bad or missing arguments, a missing folder or ids file, a malformed ids file, a bad
    --start-regex): argparse's usage errors exit here with one line and status 1; the others raise
    :class:`marginnce_kit.cli.UsageError`, one line on stderr and status 1 under :func:`marginnce_kit.cli.run_main`
    (``python -m marginnce_kit.prepare``, ``marginnce-prepare``).

    Raises:
        UsageError: a missing folder or ids file, a malformed ids file, a bad --start-regex, a --frame-format
            other than the one of the frames already in ROOT, an unreadable ROOT/prepare_report.json (--verify).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers: expected an int >= 1, got {args.workers}")
    if not (math.isfinite(args.audio_seconds) and args.audio_seconds >= MIN_AUDIO_SECONDS):
        parser.error(f"--audio-seconds: expected a finite number >= {MIN_AUDIO_SECONDS:g}, got {args.audio_seconds}")
    if args.verify is not None:
        if args.videos is not None or args.out is not None:
            parser.error("--verify ROOT cannot be combined with --videos/--out")
        if args.ids is None:
            parser.error("--verify ROOT needs --ids LIST")
    elif args.videos is None or args.out is None:
        parser.error("expected --videos DIR and --out ROOT (or --verify ROOT --ids LIST)")
    elif args.write_clean is not None:
        parser.error("--write-clean CLEAN goes with --verify ROOT --ids LIST")
    if args.write_clean is not None and not args.write_clean.parent.is_dir():
        raise UsageError(f"--write-clean: no folder {str(args.write_clean.parent)!r} to write "
                         f"{args.write_clean.name!r} into", "create it first, or give a path in an existing folder")
    try:
        ids = read_ids(args.ids) if args.ids is not None else None
        if args.verify is not None:
            assert ids is not None
            problems = verify(args.verify, ids, workers=args.workers)
            for item in problems:
                print(f"{item['id']}\t" + "; ".join(item["problems"]))  # type: ignore[arg-type]
            print(f"verify: {len(ids)} ids, {len(ids) - len(problems)} ok, {len(problems)} with problems")
            if args.write_clean is not None:
                bad = {item["id"] for item in problems}
                clean = [clip_id for clip_id in ids if clip_id not in bad]
                write_ids(args.write_clean, clean)
                print(f"verify: wrote the {len(clean)} ids that pass to {args.write_clean}")
            return 1 if problems else 0
        rule = WindowRule(args.window, args.start_regex, args.clip_seconds, args.window_tolerance)
        assert args.videos is not None and args.out is not None  # checked above
        report = prepare(
            args.videos, args.out, ids=ids, workers=args.workers,
            audio_seconds=args.audio_seconds, progress=not args.no_progress, window=rule,
            frame_size=args.frame_size, frame_format=args.frame_format,
        )
    except (OSError, ValueError) as error:
        raise UsageError(str(error)) from None
    failed = report["failed"]
    assert isinstance(failed, list)
    print(
        f"prepare: {report['total']} clips: {len(report['done'])} done, "  # type: ignore[arg-type]
        f"{report['skipped']} skipped, {len(failed)} failed "
        f"(report: {args.out / REPORT_NAME})"
    )
    return 0


def run(argv: Sequence[str] | None = None) -> None:
    """``python -m marginnce_kit.prepare``: :func:`main` under :func:`marginnce_kit.cli.run_main`."""
    run_main(main, argv, prog=command_name("marginnce_kit.prepare"))
