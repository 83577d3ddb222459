"""Embedded default dataset: a synthetic audio-visual localisation set in the VGGSound / VGG-SS layout.

Every clip is drawn deterministically from ``(seed, split, index)``, so the same
configuration always gives byte-identical files, and the loaders, trainers and the
evaluator of ``marginnce_kit`` run on it unchanged (the on-disk layout of :mod:`marginnce_kit.layout`, the
protocol of :mod:`marginnce_kit.protocol`).

What a clip is
--------------
* ``K = num_classes`` sound classes. Class ``k`` has

  - an appearance: hue ``k / K`` (saturated colour), one of 8 shapes (``k mod 8``:
    ellipse, rectangle, diamond, triangle, ring, cross, octagon, hourglass) and one of 6
    textures (``k mod 6``: solid, horizontal / vertical / diagonal stripes, checker,
    dots) in a darker shade of the hue; (shape, texture) pairs are unique for K <= 24;
  - a sound: a harmonic tone with fundamental ``f0_k = 140 * 10 ** (k / (K - 1))`` Hz
    (log-spaced 140 .. 1400 Hz, ~4.4 semitones apart for K = 10), ``n_k`` harmonics with
    geometric decay, amplitude modulation at ``am_k`` Hz (2 .. 12 Hz), optional
    vibrato, plus a Gaussian noise band centered at ``c_k`` (2 .. 6.5 kHz).

  Instances jitter every parameter a little (hue +-0.015, f0 +-5 %, AM rate +-10 %,
  texture period 8 .. 16 px, random phases, level and shading).
* The frame (``image_size`` x ``image_size`` RGB): a smooth desaturated random
  background with low-saturation clutter shapes (``clutter``) and pixel noise; 0 ..
  ``max_distractors`` silent objects of other classes; the sounding object drawn last,
  fully visible, filling its box (every shape touches the four sides of its box).
* The box: ONE box per clip, the sounding object's, snapped to whole pixels. Its width
  and height fractions are drawn by inverse CDF from the quantiles (every 5 %) of the
  real VGG-SS clip envelopes (bounding box of a clip's boxes) in
  ``vggss_box_stats.json`` (``marginnce_kit/data/box_stats.py``), coupled by a Gaussian
  copula with the real Spearman correlation (0.50). Multi-box clips (10 % of VGG-SS)
  are not modelled, so the area of our box follows the envelope area, which is a
  little larger than the union area of a multi-box clip.
* The position: box center ``0.5 + t * (1 - w) / 2`` per axis, ``t = sign(u) |u| ** g``,
  ``u ~ U(-1, 1)``, ``g = (1 + centre_bias) / (1 - centre_bias)``: ``centre_bias = 0``
  is uniform over all positions that keep the box inside the frame, ``> 0`` pulls
  boxes towards the center, ``< 0`` pushes them to the edges. Distractors use the same
  size and position law; each takes the least-overlapping of 8 candidate positions.

  Why the default is ``centre_bias = -0.5`` (edge-biased, ``E|t| = 0.75``): VGG-SS boxes
  are large, and under the median-threshold protocol (at least half the frame is
  predicted) the fixed centered map scores cIoU 34.0 on real VGG-SS out of a ceiling of
  50.5 (perfect localisation). With VGG-SS sizes and *uniform* positions it scores
  ~36 on our boxes, i.e. no lower than on the real benchmark; with ``-0.5`` it scores
  ~28 (ceiling ~51, unchanged: it depends on box sizes only), so a no-model prior
  stays clearly below what localisation can reach. The very large boxes (17 % of the
  clips are wider and taller than 0.7) contain the center wherever they are, so no
  position law brings it much below ~20.
* The audio: 16 kHz mono, ``seconds`` long (48,000 samples), the class sound plus
  coloured background noise at ``snr_db``, peak level 0.3 .. 0.8, PCM_16.

Noisy correspondences (the paper's motivation), training split only:

* faulty positives: ``round(faulty_positive_rate * num_train)`` training clips get the
  audio of another training clip of a *different* class (from the same heard /
  unheard group, so heard-class training never hears an unheard class); the list is in
  ``meta.json["faulty_positives"]`` (``{clip id: id whose audio it carries}``);
* faulty negatives: classes are few relative to the batch (K = 10, batch >= 32), so
  same-class clips meet as negatives in every batch.

The test split is clean (every clip carries its own audio) and annotated.

Open set (paper Table 4): ``round(heard_fraction * K)`` classes (seeded choice) are
*heard*. ``heard_train.txt`` lists the training clips of heard classes;
``heard_test.csv`` / ``unheard_test.csv`` the test clips of heard / unheard classes.
Distractors come from the clip's own group.

On disk (``root``)::

    frames/<id>.jpg      RGB, image_size x image_size, JPEG quality 90
    audio/<id>.wav       16 kHz mono PCM_16, round(seconds * sample_rate) samples
    vggss.json           test annotations [{"file", "class", "bbox": [[x0, y0, x1, y1]]}],
                         corners normalised to [0, 1]; int(v * image_size) gives the pixel
    train.txt            training ids, one per line ("\n")
    test.csv             test ids, one per line, "\r\n" line ends (as vggss_test.csv)
    heard_train.txt, heard_test.csv, unheard_test.csv
    objects.json         every clip: split, class, box, distractors, audio source
    meta.json            generator version, config, config hash, classes, heard / unheard
                         classes, counts, faulty positives (written last; the directory
                         appears by an atomic rename only once complete)

Ids are ``train_000000`` ... and ``test_000000`` ... .

API::

    ensure_dataset(root=None, preset="default", config=None, **overrides) -> Path
    generate(root, config, *, workers=None, overwrite=False) -> Path
    render_clip(config, split, index) -> RenderedClip      # one clip in memory

CLI: ``python -m marginnce_kit.data.synthetic [--out DIR] [--preset smoke|default|full] [--seed N]``.


Modules: :mod:`.config` (config, presets, hash), :mod:`.plan` (class prototypes, box sizes, per-clip
plan), :mod:`.image` and :mod:`.audio` (rendering), :mod:`.render` (one clip), :mod:`.writer` (a data
set on disk), :mod:`.cache` (the hash-keyed cache), :mod:`.cli` (the command line).
"""

from .audio import render_audio
from .cache import default_cache_root, ensure_dataset
from .cli import main
from .config import (
    GENERATOR_VERSION,
    PRESETS,
    SHAPES,
    SPLITS,
    TEXTURES,
    VGGSOUND_LIKE,
    EmbeddedConfig,
    SyntheticConfig,
    config_hash,
)
from .image import sounding_boxes
from .plan import BoxSizeSampler, ClassPrototype, ClipPlan, DatasetPlan, class_prototypes, plan_dataset
from .render import RenderedClip, render_clip
from .writer import generate, is_complete, read_meta

__all__ = [
    "GENERATOR_VERSION",
    "SHAPES",
    "TEXTURES",
    "SPLITS",
    "EmbeddedConfig",
    "SyntheticConfig",
    "VGGSOUND_LIKE",
    "PRESETS",
    "ClassPrototype",
    "class_prototypes",
    "BoxSizeSampler",
    "ClipPlan",
    "DatasetPlan",
    "plan_dataset",
    "RenderedClip",
    "render_clip",
    "sounding_boxes",
    "render_audio",
    "config_hash",
    "default_cache_root",
    "is_complete",
    "read_meta",
    "generate",
    "ensure_dataset",
    "main",
]
