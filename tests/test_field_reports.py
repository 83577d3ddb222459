"""Public reports from the field, replayed against marginnce_loss and marginnce_kit as a user meets them (issue 22).

Each test names one public report (``owner/repo#N``, found through the issues corpus), says what its user met
and what the project does instead, and reproduces the situation through the public API or the command line on
the CPU. Where the project already behaves right the test pins that behaviour (each was checked to fail when
the behaviour is broken); where it did not, the fix is in the library and the test is its regression test.
The earlier replays (NVIDIA/Megatron-LM#251, pytorch/pytorch#64529, #30303, openai/CLIP#46,
pytorch/pytorch#167463) live beside the code they exercise (``tests/test_layouts.py``,
``tests/test_temperature.py``, ...).
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from marginnce_loss import LocalizationMarginNCE, MarginNCE

pytest.importorskip("soundfile")
pytest.importorskip("PIL")
pytest.importorskip("torchvision")

import soundfile as sf  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from marginnce_kit import train as train_cli  # noqa: E402
from marginnce_kit.cli import UsageError  # noqa: E402
from marginnce_kit.data import AudioVisualDataset, FailedSample, collate_batch, load_annotations, load_waveform  # noqa: E402
from marginnce_kit.data.audio import SAMPLE_RATE  # noqa: E402
from marginnce_kit.data.frames import decode_jpeg_frame, load_frame  # noqa: E402
from marginnce_kit.evaluation import evaluate_model  # noqa: E402
from marginnce_kit.protocol import ciou_per_sample, median_threshold_mask, summarize_cious  # noqa: E402
from marginnce_kit.training.sampler import GlobalBatchSampler  # noqa: E402

from .fixtures import AVFixture, make_av_dataset, train_argv  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _ce_reference(sim: torch.Tensor, margin: float, tau: float) -> torch.Tensor:
    """eq. 3 as ``F.cross_entropy`` in float64 on the margin-shifted similarities (the loss's definition)."""
    logits = sim.to(torch.float64).clone()
    logits.diagonal().sub_(margin)
    return F.cross_entropy(logits / tau, torch.arange(sim.shape[0]))


def _sim(b: int, seed: int) -> torch.Tensor:
    """A ``[b, b]`` matrix of cosines in [-1, 1] with the positives high on the diagonal."""
    g = torch.Generator().manual_seed(seed)
    sim = torch.rand(b, b, generator=g, dtype=torch.float64) * 1.6 - 0.8
    sim.diagonal().copy_(0.8 + 0.2 * torch.rand(b, generator=g, dtype=torch.float64))
    return sim


def _own_dataset(tmp_path: Path, n_train: int = 4, n_test: int = 1) -> AVFixture:
    """A private copy of the tiny dataset (tests/fixtures.py) that a test may break."""
    return make_av_dataset(tmp_path / "data", n_train=n_train, n_test=n_test)


# ------------------------------------------------------------------------------------------ the loss's numerics
def test_replay_lightning_bolts_811_low_temperature_does_not_overflow():
    """Lightning-Universe/lightning-bolts#811 (https://github.com/Lightning-Universe/lightning-bolts/issues/811):
    the SimCLR ``nt_xent_loss`` built ``e ** (1 / temperature)`` and overflowed at temperature 0.01
    ("value cannot be converted to type float without overflow: 2.68812e+43").

    Here: eq. 3 is a log-sum-exp of ``(S - m I) / tau`` in float32 or wider, never an ``exp`` of ``1 / tau``; at
    ``tau`` = 0.01, 0.005 and 0.001 (where ``exp(1 / tau)`` is infinite in float32) the loss and its gradient
    are finite and equal to the float64 cross-entropy of the same similarities."""
    sim64 = _sim(6, 0)
    for tau in (0.01, 0.005, 0.001):
        sim = sim64.float().requires_grad_()
        assert torch.isinf(torch.tensor(1.0 / tau, dtype=torch.float32).exp())  # the reported trap, in float32
        loss = MarginNCE(margin=-0.2, tau=tau)(sim)
        (grad,) = torch.autograd.grad(loss, sim)
        ref_in = sim.detach().double().requires_grad_()
        ref = _ce_reference(ref_in, -0.2, tau)
        (ref_grad,) = torch.autograd.grad(ref, ref_in)
        assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(grad).all()
        assert math.isclose(float(loss.detach()), float(ref), rel_tol=1e-5, abs_tol=1e-5)
        assert torch.allclose(grad.double(), ref_grad, rtol=1e-4, atol=1e-5)


def test_replay_pml_6_half_precision_similarities():
    """KevinMusgrave/pytorch-metric-learning#6 (https://github.com/KevinMusgrave/pytorch-metric-learning/issues/6):
    users of NTXentLoss under apex / half precision met dtype errors from the loss's own ``float()`` casts and
    were told to copy the loss and cast a tensor to ``half()`` themselves.

    Here: a float16 or bfloat16 similarity matrix (what autocast hands over) goes in as it is; the loss comes out
    in float32, equal to the float64 loss of the same (rounded) similarities to float32 accuracy, at EZ-VSL's
    ``tau = 0.03`` and at 0.01, where ``exp(S / tau)`` overflows float16 (max 65504); its gradient comes back in
    the input's dtype, finite; symmetric (EZ-VSL's two directions) too."""
    for dtype in (torch.float16, torch.bfloat16):
        half = _sim(8, 1).to(dtype)
        for tau in (0.03, 0.01):
            assert torch.isinf((half[0, 0] / tau).exp()) or dtype == torch.bfloat16  # float16 would overflow
            for symmetric in (False, True):
                sim = half.clone().requires_grad_()
                loss = MarginNCE(margin=-0.2, tau=tau, symmetric=symmetric)(sim)
                (grad,) = torch.autograd.grad(loss, sim)
                ref = _ce_reference(half, -0.2, tau)
                if symmetric:
                    ref = ref + _ce_reference(half.t(), -0.2, tau)
                assert loss.dtype == torch.float32 and grad.dtype == dtype and torch.isfinite(grad).all()
                assert math.isclose(float(loss.detach()), float(ref), rel_tol=2e-6, abs_tol=1e-6), (dtype, tau, symmetric)


def test_replay_lightly_1259_nan_features_are_named_by_the_input_guard():
    """lightly-ai/lightly#1259 (https://github.com/lightly-ai/lightly/issues/1259): in half precision
    ``F.normalize``'s ``eps = 1e-12`` rounds to 0, so a (near-)zero embedding normalises to 0 / 0 = NaN and
    NTXentLoss returned NaN with nothing saying where it came from.

    Here: a zero vector normalised by ``F.normalize`` in float32 is allowed (it gives 0, not NaN, and the guard
    stays silent); a NaN feature is not coerced (the loss is NaN, as ``F.cross_entropy`` would be), but the
    first-call input guard of ``LocalizationMarginNCE`` now names the tensor and counts its non-finite
    vectors instead of passing NaN norms silently (their comparisons with the tolerance were all False)."""
    g = torch.Generator().manual_seed(2)
    img = F.normalize(torch.randn(4, 8, 3, 3, generator=g), dim=1).half()
    raw_aud = torch.randn(4, 8, generator=g)
    raw_aud[2] = 1e-8  # underflows to 0 in float16
    aud = F.normalize(raw_aud.half(), dim=1)
    assert torch.isnan(aud[2]).all() and torch.isfinite(aud[[0, 1, 3]]).all()  # the reported NaN
    with pytest.warns(UserWarning, match=r"aud: .*1 of 4 feature vectors are not finite"):
        loss = LocalizationMarginNCE("max", margin=-0.2, tau=0.03, backend="eager")(img, aud)
    assert torch.isnan(loss)
    zero = F.normalize(raw_aud, dim=1)  # float32: eps holds, the zero vector stays zero
    zero[2] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = LocalizationMarginNCE("max", margin=-0.2, tau=0.03, backend="eager")(img.float(), zero)
    assert torch.isfinite(loss)


def test_replay_pytorch_4534_batch_of_one():
    """pytorch/pytorch#4534 (https://github.com/pytorch/pytorch/issues/4534): "The batch sizes are not always 1.
    Say I have a batch size of 16 and my dataset has 1 [more]": the last batch of an epoch held one sample and
    BatchNorm raised "Expected more than 1 value per channel when training".

    Here: the trainer's ``GlobalBatchSampler`` drops the incomplete tail (17 clips, batch 16: one batch of 16;
    under two ranks every share is half a global batch, never a lone clip), and a contrastive loss over one pair,
    which ``F.cross_entropy`` silently scores 0 with a zero gradient, is refused with the reason."""
    sampler = GlobalBatchSampler(17, 16, seed=3)
    assert [len(b) for b in sampler] == [16]
    for rank in (0, 1):
        shares = list(GlobalBatchSampler(11, 4, world_size=2, rank=rank, seed=3))
        assert [len(s) for s in shares] == [2, 2]
    lone = torch.tensor([[0.9]], requires_grad=True)
    silent = F.cross_entropy(lone / 0.07, torch.arange(1))
    assert float(silent) == 0.0 and float(torch.autograd.grad(silent, lone)[0]) == 0.0  # the trap
    with pytest.raises(ValueError, match=r"sim: expected B >= 2 \(a single pair has no negative"):
        MarginNCE()(lone)
    img, aud = F.normalize(torch.ones(1, 4, 2, 2), dim=1), F.normalize(torch.ones(1, 4), dim=1)
    with pytest.raises(ValueError, match=r"img: expected B >= 2"):
        LocalizationMarginNCE()(img, aud)


# ------------------------------------------------------------------------------------------------- the data
def test_replay_pytorch_5059_loader_workers_draw_distinct_reproducible_crops(tmp_path):
    """pytorch/pytorch#5059 (https://github.com/pytorch/pytorch/issues/5059): ``np.random`` in a Dataset gave every
    DataLoader worker the same numbers, so the workers' items got identical "random" augmentations.

    Here: four clips with the very same frame; after ``set_epoch`` each clip's crop and flip come from a generator
    seeded by (seed, epoch, clip id): the four crops differ from each other, the next epoch's differ from this
    one's, and two worker processes give the bits of loading in the main process."""
    fx = _own_dataset(tmp_path)
    for clip_id in fx.train_ids[1:]:
        shutil.copyfile(fx.frame(fx.train_ids[0]), fx.frame(clip_id))
    ds = AudioVisualDataset(fx.root, fx.train_ids, split="train", max_failures=0)

    def crops(epoch: int, workers: int) -> dict[str, torch.Tensor]:
        ds.set_epoch(epoch, 7)
        loader = DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate_batch)
        return {i: image for batch in loader for i, image in zip(batch["id"], batch["image"])}

    main_process, in_workers, next_epoch = crops(0, 0), crops(0, 2), crops(1, 0)
    assert all(torch.equal(main_process[i], in_workers[i]) for i in fx.train_ids)
    images = [main_process[i] for i in fx.train_ids]
    assert all(not torch.equal(a, b) for k, a in enumerate(images) for b in images[k + 1:])
    assert all(not torch.equal(main_process[i], next_epoch[i]) for i in fx.train_ids)


def test_replay_pillow_1188_exif_orientation_is_not_applied_by_either_decoder(tmp_path):
    """python-pillow/Pillow#1188 (https://github.com/python-pillow/Pillow/issues/1188): a phone JPEG carries an EXIF
    Orientation tag; ``Image.open`` returns the stored pixels, not what a viewer shows, and users were surprised
    either way (``ImageOps.exif_transpose`` applies it).

    Here: the loader reads the stored pixels, as upstream EZ-VSL's ``Image.open(...).convert('RGB')`` does (the
    VGG-SS boxes are in the stored frame's coordinates), and both frame decoders agree: the Pillow path
    (``--decode-device cpu``) and torchvision's ``decode_jpeg`` (the ``--decode-device cuda`` path, run here on
    the CPU) give the same unrotated ``[3, H, W]``; a transposing viewer would show the frame turned by 90
    degrees."""
    rng = np.random.default_rng(4)
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    Image.fromarray(rng.integers(0, 256, size=(40, 64, 3), dtype=np.uint8)).save(path, exif=exif, quality=95)
    with Image.open(path) as shown:
        assert ImageOps.exif_transpose(shown).size == (40, 64)  # what a viewer displays: 40 wide, 64 high
    pillow, turbo = load_frame(path), decode_jpeg_frame(path, "cpu")
    assert tuple(pillow.shape) == (3, 40, 64) and torch.equal(pillow, turbo)


def test_replay_torchvision_6538_cmyk_and_grey_jpegs_decode_alike(tmp_path):
    """pytorch/vision#6538 (https://github.com/pytorch/vision/issues/6538): ``decode_jpeg(..., mode=RGB)`` raised
    "Unsupported color conversion request" on CMYK JPEGs (ImageNet has about 20), so users had to fall back to PIL.

    Here: a CMYK JPEG (as Pillow writes it, with the Adobe marker) and a greyscale JPEG are accepted frames, and
    the two frame decoders give the same RGB bits: Pillow's ``convert("RGB")`` (``--decode-device cpu``) and
    torchvision's ``decode_jpeg`` (the ``--decode-device cuda`` path, run on the CPU), as
    ``decode_jpeg_frame``'s doc promises; the dataset loads both clips."""
    fx = _own_dataset(tmp_path, n_train=2)
    rgb = Image.fromarray(np.random.default_rng(8).integers(0, 256, size=(40, 64, 3), dtype=np.uint8))
    for clip_id, mode in zip(fx.train_ids, ("CMYK", "L")):
        rgb.convert(mode).save(fx.frame(clip_id), quality=95)
        with Image.open(fx.frame(clip_id)) as im:
            assert im.mode == mode
        pillow, turbo = load_frame(fx.frame(clip_id)), decode_jpeg_frame(fx.frame(clip_id), "cpu")
        assert tuple(pillow.shape) == (3, 40, 64) and torch.equal(pillow, turbo), mode
    ds = AudioVisualDataset(fx.root, fx.train_ids, split="test", max_failures=0)
    assert not any(isinstance(ds[k], FailedSample) for k in range(len(ds)))


def test_replay_pillow_5991_sixteen_bit_frames_are_refused(tmp_path):
    """python-pillow/Pillow#5991 (https://github.com/python-pillow/Pillow/issues/5991): a 16-bit (I;16B) PNG
    "converted to RGB ruins the image": ``convert("RGB")`` clips the 16-bit values to 8 bits, so the picture
    comes out almost white or black.

    Here: a 16-bit frame (a PNG under the clip's ``.jpg`` name, which the loader reads by content) is not
    converted; the clip becomes a ``FailedSample`` with the acceptance rule's reason, which the failure
    accounting counts, and every other clip loads."""
    fx = _own_dataset(tmp_path)
    bad = fx.train_ids[1]
    Image.fromarray(np.full((72, 96), 40000, dtype=np.uint16)).save(fx.frame(bad), format="PNG")
    with Image.open(fx.frame(bad)) as im:
        assert im.mode.startswith("I;16")
    ds = AudioVisualDataset(fx.root, fx.train_ids, split="train", max_failures=1)
    items = [ds[k] for k in range(len(ds))]
    failed = [it for it in items if isinstance(it, FailedSample)]
    assert [f.id for f in failed] == [bad]
    assert failed[0].reason.startswith("frame: unsupported colour mode 'I;16'")


def test_replay_soundfile_314_eight_bit_wav_is_unsigned(tmp_path):
    """bastibe/python-soundfile#314 (https://github.com/bastibe/python-soundfile/issues/314): writing and reading
    8-bit WAV, signed or unsigned (``PCM_S8`` / ``PCM_U8``); 8-bit WAV samples are unsigned with silence at 128,
    and a reader that takes them as signed turns silence into full scale.

    Here: a clip stored as 8-bit WAV (``PCM_U8``) loads centred on zero and within one 8-bit step (1/128) of
    the same tone stored as 16-bit; the dataset accepts it (the integer-PCM window read included)."""
    fx = _own_dataset(tmp_path, n_train=2)
    clip = fx.train_ids[0]
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    tone = 0.5 * np.sin(2 * np.pi * 440.0 * t)
    sixteen = tmp_path / "tone16.wav"
    sf.write(str(sixteen), tone, SAMPLE_RATE, subtype="PCM_16")
    sf.write(str(fx.audio(clip)), tone, SAMPLE_RATE, subtype="PCM_U8")
    assert sf.info(str(fx.audio(clip))).subtype == "PCM_U8"
    w8, w16 = load_waveform(fx.audio(clip)), load_waveform(sixteen)
    assert abs(float(w8.mean())) < 1e-2 and float(np.abs(w8 - w16).max()) <= 1 / 128 + 1e-9
    item = AudioVisualDataset(fx.root, [clip], split="test", max_failures=0)[0]
    assert not isinstance(item, FailedSample) and torch.isfinite(item["spectrogram"]).all()


def test_replay_librosa_129_zero_length_audio(tmp_path):
    """librosa/librosa#129 (https://github.com/librosa/librosa/issues/129): "Reading zero-length soundfiles fails"
    with ``ValueError: need at least one array to concatenate``, an error deep inside the reader that names
    neither the file nor the problem.

    Here: a WAV with a header and no samples is a ``FailedSample`` of its clip with the acceptance rule's
    reason (too short, 0 s), counted by the failure accounting; the other clips load."""
    fx = _own_dataset(tmp_path)
    empty = fx.train_ids[2]
    sf.write(str(fx.audio(empty)), np.zeros(0), SAMPLE_RATE, subtype="PCM_16")
    assert sf.info(str(fx.audio(empty))).frames == 0
    ds = AudioVisualDataset(fx.root, fx.train_ids, split="train", max_failures=1)
    failed = [it for it in (ds[k] for k in range(len(ds))) if isinstance(it, FailedSample)]
    assert [(f.id, f.reason) for f in failed] == [(empty, "too short: 0.000 s of audio, the minimum is 1 s")]


def test_replay_sentence_transformers_3189_duplicate_clips_in_the_train_list(tmp_path, av_dataset):
    """huggingface/sentence-transformers#3189 (https://github.com/huggingface/sentence-transformers/issues/3189):
    with in-batch negatives, the same item twice in a batch is its own negative (a positive pushed away); the
    library added a ``no_duplicates`` batch sampler.

    Here: a clip listed twice in the train list would be such a false negative whenever both copies land in one
    batch; the trainer refuses the list with one line naming the file, the line and the id (a ``UsageError``,
    exit status 1), before anything is written."""
    fx = av_dataset(n_train=16, n_test=8)
    listed = tmp_path / "train.txt"
    listed.write_text("".join(f"{i}\n" for i in [*fx.train_ids[:6], fx.train_ids[2], *fx.train_ids[6:]]))
    out = tmp_path / "run"
    with pytest.raises(UsageError, match=rf"--train-list: {listed}:7: duplicate clip id '{fx.train_ids[2]}'"):
        train_cli.main(train_argv(fx, out, "--train-list", str(listed)))
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ evaluation
def _box_gt(n: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    gt = torch.zeros(n, size, size)
    for k in range(n):
        y0, x0 = (int(v) for v in torch.randint(0, size // 2, (2,), generator=g))
        h, w = (int(v) for v in torch.randint(size // 8, size // 2, (2,), generator=g))
        gt[k, y0:y0 + h, x0:x0 + w] = 1.0
    return gt


def test_replay_slavc_2_relative_prediction():
    """stoneMo/SLAVC#2 (https://github.com/stoneMo/SLAVC/issues/2): results "about 40% lower" than the README
    until the user passed ``--relative_prediction`` and set the evaluator's ``default_conf_thr`` to 0.5: the
    predicted region depended on an absolute threshold on the map's values.

    Here: the protocol's prediction is relative only (the pixels at or above the map's median after min-max
    normalisation): any increasing transform of the maps (scale, shift, cube, exponential) gives the same masks
    and the same cIoU, and a tie-free map predicts exactly ``H W - floor(H W / 2)`` pixels; an absolute 0.5 on
    the normalised cube would predict far fewer."""
    g = torch.Generator().manual_seed(5)
    maps = torch.rand(4, 224, 224, generator=g, dtype=torch.float64)
    gt = _box_gt(4, 224, 6)
    ciou = ciou_per_sample(maps, gt)
    for transform in (lambda m: 3.0 * m + 7.0, lambda m: 1e-3 * m, lambda m: m ** 3, lambda m: torch.exp(5.0 * m)):
        assert torch.equal(ciou_per_sample(transform(maps), gt), ciou)
    masks = median_threshold_mask(maps)
    assert masks.sum(dim=(1, 2)).tolist() == [224 * 224 - 224 * 224 // 2] * 4
    assert int((maps ** 3 >= 0.5).sum()) < 0.25 * masks.numel()  # what an absolute threshold would predict


def test_replay_lvs_14_success_threshold_and_ties_at_the_median():
    """hche11/Localizing-Visual-Sounds-the-Hard-Way#14
    (https://github.com/hche11/Localizing-Visual-Sounds-the-Hard-Way/issues/14): "why do you use the threshold
    (0.5) in cal_CIoU" when relative-prediction papers take the top 50% of the map.

    Here (the protocol's two thresholds): a clip is a success when its cIoU is at least 0.5 (0.5 itself counts,
    as ``np.mean(ciou >= 0.5)`` upstream), AUC is the trapezoid over 0, 0.05, ..., 1 of the fraction at or
    above each, and the map is cut at its median with ``>=`` (EZ-VSL's ``cal_CIOU(pred, gt, thr)``), so pixels
    tied with the median are predicted. LVS's own ``test.py`` (at 8fe8cbb) keeps only ``pred > threshold`` and
    predicts none of them: on the tied map below the two rules give cIoU 1 and 0.6; on a tie-free map they
    differ by one pixel of 50,176 (``marginnce_kit.protocol``'s doc now says so)."""
    cious = [0.5, 0.5 - 1e-12, 1.0, 0.0, 0.73]
    summary = summarize_cious(cious)
    x = np.arange(21) * 0.05
    y = np.array([np.mean(np.asarray(cious) >= t) for t in x])
    assert summary["ciou"] == 100.0 * 3 / 5 and summary["n"] == 5
    assert math.isclose(summary["auc"], 100.0 * float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2), rel_tol=1e-12)
    # a 4 x 4 map: 6 zeros, 4 pixels tied at the median (0.5), 6 ones; the box covers the ones and the tied pixels
    m = torch.tensor([[0.0, 0, 0, 0], [0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1], [1, 1, 1, 1]], dtype=torch.float64)[None]
    gt = (m > 0).to(torch.float64)
    assert median_threshold_mask(m).sum() == 10  # the 4 tied pixels are in
    assert float(ciou_per_sample(m, gt, size=None)) == 1.0
    strict = (m > torch.sort(m.flatten())[0][8]).to(torch.float64)  # LVS test.py's rule, for contrast
    assert float((strict * gt).sum() / (gt.sum() + (strict * (gt == 0)).sum())) == 0.6


class _FirstChannel(torch.nn.Module):
    """A "model" whose 7 x 7 response map is the mean of the image's first channel over 32 x 32 cells."""

    def localize(self, image: torch.Tensor, spectrogram: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(image[:, :1], 32)[:, 0]


def _test_set(root: Path) -> AudioVisualDataset:
    ids = [line.split(",")[0] for line in (root / "test.csv").read_text().splitlines()]
    return AudioVisualDataset(root, ids, split="test", annotations=load_annotations(root / "vggss.json", "vggss", ids),
                              max_failures=0)


def _evaluate_on_rank(rank: int, root: str, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=2,
                            timeout=timedelta(seconds=120))
    try:
        result = evaluate_model(_FirstChannel(), _test_set(Path(root)), batch_size=2, distributed=True)
        Path(tmp, f"rank{rank}.json").write_text(json.dumps({k: result[k] for k in ("ciou", "auc", "n", "per_clip")}))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes
@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo")
def test_replay_pytorch_25162_distributed_evaluation_scores_every_clip_once(tmp_path):
    """pytorch/pytorch#25162 (https://github.com/pytorch/pytorch/issues/25162): "Incorrect Validation Accuracy Due
    to Distributed Sampler": ``DistributedSampler`` pads a split to a multiple of the world size by repeating
    clips, so a distributed evaluation scores some clips twice.

    Here: 5 test clips over 2 gloo ranks (shards of 2 and 3, no padding): every rank gets the result of one
    process on the whole split, each clip scored once, in test-set order (``n`` = 5, the same cIoU, AUC and
    per-clip values)."""
    fx = make_av_dataset(tmp_path / "data", n_train=0, n_test=5)
    single = evaluate_model(_FirstChannel(), _test_set(fx.root), batch_size=2)
    mp.start_processes(_evaluate_on_rank, args=(str(fx.root), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["n"] == 5 and got["per_clip"]["id"] == fx.test_ids == single["per_clip"]["id"]
        assert got["per_clip"]["ciou"] == pytest.approx(single["per_clip"]["ciou"], rel=1e-12, abs=0)
        assert (got["ciou"], got["auc"]) == pytest.approx((single["ciou"], single["auc"]), rel=1e-12, abs=0)
