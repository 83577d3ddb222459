r"""Turn downloaded videos into the on-disk layout the data loaders read.

For every video ``<id>.<ext>`` (``<id>`` is the file stem, e.g. the VGGSound id
``zpWuikVorYg_000032``) this writes

* ``ROOT/frames/<id>.jpg`` -- the center frame of the clip's window as players display it (turned by the
  video's display rotation, see Orientation), RGB, JPEG quality 95 (Pillow); with ``--frame-format png``
  ``ROOT/frames/<id>.png`` instead, lossless PNG (FNAC's VGGSound loaders read ``.png``); with
  ``--frame-size PX`` its shorter side bicubic-resized to ``PX`` (``save_frame``; 246 is what the
  training transform resizes 224-pixel inputs to, so the loader then skips that resize);
* ``ROOT/audio/<id>.wav``  -- up to ``audio_seconds`` of the window's audio centered on that frame's
  time, resampled to 16 kHz mono by FFmpeg's resampler (PyAV ``AudioResampler``, format ``s16``)
  and written as 16-bit PCM WAV (soundfile).

Definitions
-----------
Times
    Seconds on the file's own timeline (its packets' timestamps).  The file starts at ``t0``, the
    time of its first video frame (audio packets may start a few milliseconds earlier with the
    codec's priming samples), and lasts ``D = end - t0`` where ``end`` is the later of the two
    streams' last timestamp plus that packet's duration.
Clip window
    The span ``[a, b)`` of the file the clip is taken from.  A VGGSound id
    ``<11-character YouTube id>_<start second, 6 digits>`` names the 10 s clip ``[s, s + 10)`` of a
    YouTube video; users download either that clip (trimmed, ``D`` about 10 s) or the whole video
    (untrimmed).  With ``window="auto"`` (the default):

    * the id matches ``id_pattern`` (default ``VGGSOUND_ID_PATTERN``) and the video is clearly longer
      than one clip, ``D > clip_seconds + tolerance`` (10 s + ``WINDOW_TOLERANCE`` = 1 s): the window
      comes from the id, ``[t0 + s, t0 + s + clip_seconds)``;
    * otherwise (a trimmed clip, or another id scheme): the whole file.

    ``window="from-id"`` always takes the window from the id (an id that does not match is a
    failure); ``window="whole-file"`` never does.  ``id_pattern`` is a regular expression matched
    against the whole id with a named group ``start`` (seconds, e.g. ``\d+`` or ``\d+(\.\d+)?``)
    and optionally ``end`` (seconds; without it the window is ``clip_seconds`` long).
    A window from the id must lie in the video: ``s >= D`` fails as ``window starts past the end``,
    ``s + clip_seconds > D + tolerance`` as ``window does not fit``; within the tolerance its end is
    cut to ``D``.  Neither is ever written.
Center frame
    With ``N`` video packets (= frames) whose timestamps lie in the window, the frame at index
    ``k = N // 2`` of them in presentation order (for even ``N`` the later of the two middle
    frames).  For a whole-file window at a constant frame rate this is the frame shown at the clip's
    midpoint.  Its presentation time ``t_c`` (seconds) centers the audio window.
Audio window
    Let ``n`` be the number of 16 kHz samples of the first audio stream that lie in the clip window
    (the whole stream for a whole-file window), starting at time ``t_w``,
    ``L = round(audio_seconds * 16000)`` and ``W = min(L, n)``.  The center sample is
    ``c = round((t_c - t_w) * 16000)`` and the kept samples are ``[s, s + W)`` with
    ``s = clamp(c - W // 2, 0, n - W)``: centered on the frame where the window allows, slid inwards
    (never shortened) at its ends.  For 10 s VGGSound clips the default ``audio_seconds = 10``
    therefore keeps the whole clip, and the loader's 3 s centered crop is centered on the clip, as
    upstream does.
Orientation
    A phone's portrait video holds landscape pictures and a display matrix that turns them (PyAV:
    ``VideoFrame.rotation``, e.g. -90); players and the ``ffmpeg`` command line show them turned, and boxes are
    drawn on what they show.  The center frame is turned the same way before anything is stored: by
    ``rotation`` degrees counterclockwise (``VideoFrame.rotation``'s sign, one of 0, 90, 180, -90;
    ``numpy.rot90``), which is what ``ffmpeg``'s autorotation shows (``fftools/ffmpeg_filter.c``: ``transpose=clock``
    for ``rotation = -90``; :mod:`.orientation` gives the derivation).  A display matrix that turns by an angle
    that is not a multiple of 90 degrees, mirrors the picture or is singular fails the clip as ``unreadable
    orientation`` (never a guess).
Acceptance
    Before anything is written, the frame and the kept audio go through the acceptance rule that
    ``--verify`` and the data loader apply too (``marginnce_kit.data.acceptance.clip_problems``:
    decodable, at least 1 s of audio, 16 kHz, mono, finite), and every decoded audio sample of the
    whole stream must be finite (``non-finite audio``: NaN or +-Inf anywhere).  A clip also fails as
    "too short" when its window holds no video frame, or when its audio does not reach the center
    frame's time (the pair would not be simultaneous).

Robustness
----------
* A clip whose two outputs both exist is skipped (existence only; ``--verify`` decodes).  Its entry
  in ``clips`` of the report is carried over from the previous report.
* Outputs are written to ``.<final name>.<pid>.tmp`` in the same directory and moved into
  place with ``os.replace``; a killed run leaves at most ``*.tmp`` files, which the next run
  deletes on start.  One run per ``ROOT`` at a time.
* Per-clip failures (missing video, unreadable container, no video / audio stream, window, too
  short, non-finite audio, decode error, unreadable orientation, a worker process that crashed) never stop
  the run: each is recorded with its id and reason in ``ROOT/prepare_report.json`` and counted in the
  summary line.
  With ``--workers > 1`` a crashed worker process only costs the clips it was decoding:
  the clips in flight are re-run one at a time in fresh processes to find the culprit.

Report
------
``ROOT/prepare_report.json`` (:func:`prepare`'s return value): the run's settings (``audio_seconds``,
``sample_rate``, ``frame_size``, ``frame_format``, ``window``), the counts and ``failed`` reasons, and per
prepared clip (``clips``) its ``window``, ``window_rule``, ``frame_time``, kept ``audio`` span, ``video_seconds``
and ``rotation`` (degrees counterclockwise as applied, 0 for an upright video).  ``frame_format`` (``jpg`` or
``png``) is the format of every frame in the root: ``--verify`` and :class:`marginnce_kit.data.AudioVisualDataset`
read it (``marginnce_kit.layout.root_frame_format``; ``jpg`` without a report), and ``prepare`` refuses to add
frames of another format to a root that holds some.

Command line
------------
``python -m marginnce_kit.prepare --videos DIR --out ROOT [--ids LIST] [--workers N]
[--audio-seconds 10] [--window auto|from-id|whole-file] [--start-regex RE] [--frame-size PX]
[--frame-format jpg|png]`` prepares (only the ids in ``LIST`` when given); ``python -m marginnce_kit.prepare
--verify ROOT --ids LIST [--write-clean CLEAN]`` lists the ids that lack a frame (of the root's recorded
format) or an audio file or that break the acceptance rule (exit status 1 when it finds any) and writes the
ids that pass to ``CLEAN``.
``LIST`` is a text file with one id per line (a CSV's first column is used, so ``vggss_test.csv``
and ``flickr_test.csv`` work) or a JSON list of ids or of objects with a ``"file"`` key
(``vggss.json``).


Modules: :mod:`.ids` (id lists, finding videos), :mod:`.window` (which seconds make the clip),
:mod:`.decode` (PyAV decoding), :mod:`.orientation` (the display rotation), :mod:`.output` (writing a clip),
:mod:`.pool` (the crash-isolating worker pool), :mod:`.run` (:func:`prepare`), :mod:`.verify` (:func:`verify`),
:mod:`.cli`.
"""

from ..data.acceptance import MIN_AUDIO_SECONDS, SAMPLE_RATE
from ..layout import AUDIO_DIR, FRAME_FORMATS, FRAMES_DIR, audio_path, frame_path, root_frame_format
from .cli import main
from .decode import DecodedClip, decode_clip
from .ids import VGGSOUND_ID_PATTERN, VIDEO_EXTENSIONS, ClipError, find_videos, read_ids, write_ids
from .orientation import ROTATIONS, display_rotation, matrix_rotation, rotate_frame
from .output import JPEG_QUALITY, prepare_clip, save_frame, shrink_frame
from .pool import _CRASH_ENV, _PAUSE_ENV, clean_stale_temps  # noqa: F401 (the test hooks)
from .run import REPORT_NAME, prepare
from .verify import verify, verify_clip
from .window import CLIP_SECONDS, WINDOW_MODES, WINDOW_TOLERANCE, WindowRule, audio_window, clip_window

__all__ = [
    "AUDIO_DIR",
    "CLIP_SECONDS",
    "ClipError",
    "DecodedClip",
    "FRAME_FORMATS",
    "FRAMES_DIR",
    "JPEG_QUALITY",
    "MIN_AUDIO_SECONDS",
    "REPORT_NAME",
    "ROTATIONS",
    "SAMPLE_RATE",
    "VGGSOUND_ID_PATTERN",
    "VIDEO_EXTENSIONS",
    "WINDOW_MODES",
    "WINDOW_TOLERANCE",
    "WindowRule",
    "audio_path",
    "audio_window",
    "clean_stale_temps",
    "clip_window",
    "decode_clip",
    "display_rotation",
    "find_videos",
    "frame_path",
    "main",
    "matrix_rotation",
    "prepare",
    "prepare_clip",
    "rotate_frame",
    "root_frame_format",
    "save_frame",
    "shrink_frame",
    "read_ids",
    "verify",
    "verify_clip",
    "write_ids",
]
