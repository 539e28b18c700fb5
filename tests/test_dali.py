"""The DALI data path (common/dali) on the CPU, against the PyTorch path, on the real recordings.

DALI tests carry the ``dali`` marker and are skipped, saying why, where DALI cannot be imported;
the GPU ones carry ``gpu`` as well. The first test needs no DALI.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from common.audio import SpeedPerturbation, load_audio, trim_silence_db
from common.dali import DALI_INSTALL, dali_available
from common.dataset import AudioDataset, collate_fn
from common.features import FilterbankFeatures
from common.text import DEFAULT_LABELS, ids_to_text
from tests.conftest import AUDIO, REPO, recording_entry, write_manifest

requires_dali = [
    pytest.mark.dali,
    pytest.mark.skipif(
        not dali_available(), reason=f"NVIDIA DALI cannot be imported (install: {DALI_INSTALL})"
    ),
]

# The repository's real recordings, each with a transcript unique to it (so a batch's texts name
# its utterances). Two (example3, example4) have silence that the 60 dB trim removes.
RECORDINGS = [
    "example1.wav",
    "example2.wav",
    "example3.wav",
    "example4.wav",
    "goforward.wav",
    "keynote.wav",
    *(f"librivox/sense_and_sensibility_{n}.wav" for n in ("0870", "0880", "0890", "0920", "0930")),
]
WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven"]
SPEC_AUGMENT = {"freq_masks": 2, "max_freq": 20, "time_masks": 2, "max_time": 75}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    """A manifest of the recordings, fnames relative to ``AUDIO`` (the data_dir)."""
    entries = [  # the transcripts are normalised once, at load
        recording_entry(AUDIO / name, AUDIO, f"Recording {word.upper()}!")
        for word, name in zip(WORDS, RECORDINGS)
    ]
    return str(write_manifest(tmp_path_factory.mktemp("dali") / "manifest.json", entries))


def loader(manifest, *, train=False, dataset_kw=None, features_kw=None, batch_size=4, **kw):
    from common.dali import DaliDataLoader

    return DaliDataLoader(
        [manifest],
        AUDIO,
        DEFAULT_LABELS,
        dict(dataset_kw or {}),
        {"dither": 0.0, **(features_kw or {})},
        batch_size,
        train=train,
        device=kw.pop("device", "cpu"),
        **kw,
    )


def texts(txt: torch.Tensor, txt_lens: torch.Tensor) -> list[str]:
    return [ids_to_text(t[:n].tolist(), DEFAULT_LABELS) for t, n in zip(txt, txt_lens)]


def epoch(dl, e: int) -> list[tuple[torch.Tensor, ...]]:
    dl.set_epoch(e)
    return list(dl)


def test_import_and_clear_error_without_dali():
    """``import common.dali`` works without DALI; building a loader says how to install it."""
    code = (
        "import sys; sys.modules['nvidia.dali'] = None\n"
        "import common.dali as d\n"
        "assert not d.dali_available()\n"
        "try:\n"
        "    d.DaliDataLoader(['m.json'], '.', ['a'], {}, {}, 2, train=False, device='cpu')\n"
        "except d.DaliUnavailableError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert DALI_INSTALL in out.stdout


class TestCpu:
    pytestmark = requires_dali

    def test_features_equal_pytorch_path(self, manifest):
        """Eval, no dither: DALI on the CPU equals FilterbankFeatures per utterance (<= 1e-3 on
        valid frames), identical lengths, zeros beyond, the padded batch length, the same ids."""
        dataset = AudioDataset(AUDIO, [manifest], DEFAULT_LABELS)
        fp = FilterbankFeatures(dither=0.0).eval()
        dl = loader(manifest)
        assert len(dl) == math.ceil(len(RECORDINGS) / 4)
        i, worst = 0, 0.0
        for feats, feat_lens, txt, txt_lens in dl:
            assert feats.dtype == torch.float32 and feats.device.type == "cpu"
            assert feat_lens.dtype == txt.dtype == txt_lens.dtype == torch.int64
            batch = [dataset[i + k] for k in range(feats.shape[0])]
            audio, audio_lens, ref_txt, ref_txt_lens = collate_fn(batch)
            # The batch shape is the PyTorch path's: longest utterance's frames, padded to 16.
            assert feats.shape == fp(audio, audio_lens)[0].shape
            assert torch.equal(txt, ref_txt) and torch.equal(txt_lens, ref_txt_lens.long())
            for k, (a, _) in enumerate(batch):
                ref, ref_lens = fp(a[None], torch.tensor([a.numel()]))  # alone: see common.dali
                n = int(ref_lens)
                assert int(feat_lens[k]) == n == math.ceil(a.numel() / 160)
                worst = max(worst, (feats[k, :, :n] - ref[0, :, :n]).abs().max().item())
                assert torch.all(feats[k, :, n:] == 0)
            i += feats.shape[0]
        assert i == len(RECORDINGS)
        assert worst <= 1e-3

    def test_trim_silence_close_to_pytorch_trim(self, manifest):
        """The -60 dB trim shortens the recordings with silence and keeps the others whole;
        DALI's window keeps at most ~0.1 s more at each end than the PyTorch path's trim."""
        dl = loader(manifest, dataset_kw={"trim_silence": True}, batch_size=len(RECORDINGS))
        _, feat_lens, txt, txt_lens = next(iter(dl))
        by_text = dict(zip(texts(txt, txt_lens), feat_lens.tolist()))
        for word, name in zip(WORDS, RECORDINGS):
            raw = load_audio(AUDIO / name)
            trimmed = trim_silence_db(raw)
            got = by_text[f"recording {word}"]
            assert math.ceil(trimmed.size / 160) <= got <= math.ceil(raw.size / 160)
            assert got - math.ceil(trimmed.size / 160) <= 20  # frames of 10 ms
            if trimmed.size == raw.size:
                assert got == math.ceil(raw.size / 160)

    def test_speed_perturbation_scales_length_by_drawn_factor(self, manifest):
        speed = {"min_rate": 0.85, "max_rate": 1.15}
        dl = loader(manifest, train=True, dataset_kw={"speed_perturbation": speed}, seed=5)
        dataset = AudioDataset(AUDIO, [manifest], DEFAULT_LABELS, speed_perturbation=speed, seed=5)
        lengths = {u.transcript: load_audio(u.files[0].path).size for u in dl.utts}
        factors = {}
        for b, plan in zip(epoch(dl, 0), dl.plan_epoch()):
            for k, (i, s) in enumerate(zip(plan.indices, plan.speeds)):
                # The factor is AudioDataset's for the same (seed, epoch, index).
                assert s == SpeedPerturbation(**speed).draw(dataset.rng(i))
                expected = lengths[dl.utts[i].transcript] * s / 160
                assert abs(int(b[1][k]) - expected) <= 2
                factors[i] = s
        assert len(factors) == len(RECORDINGS) // 4 * 4  # drop last
        assert max(abs(s - 1) for s in factors.values()) > 0.02
        # Another epoch draws other factors.
        dl.set_epoch(1)
        factors1 = [s for plan in dl.plan_epoch() for s in plan.speeds]
        assert sorted(factors1) != sorted(factors.values())

    def test_spec_augment_masks_only_valid_frames(self, manifest):
        strong = {"freq_masks": 2, "max_freq": 20, "time_masks": 4, "min_time": 20, "max_time": 60}
        plain = epoch(loader(manifest, train=True, seed=1), 0)
        masked = epoch(
            loader(manifest, train=True, features_kw={"spec_augment": strong}, seed=1), 0
        )
        masked_frames = masked_bands = 0
        for (x, lens, txt, _), (y, lens_y, txt_y, _) in zip(plain, masked):
            assert torch.equal(lens, lens_y) and torch.equal(txt, txt_y)
            diff = x != y
            assert torch.all(y[diff] == 0)  # masks fill with the (normalised) mean, 0
            for k, n in enumerate(lens.tolist()):
                assert torch.all(y[k, :, n:] == 0)  # padding stays zero
                frames = diff[k].all(dim=0).nonzero()  # whole columns: time masks
                assert frames.numel() > 0 and int(frames.max()) < n
                masked_frames += frames.numel()
                masked_bands += int(diff[k, :, :n].all(dim=1).sum())  # whole rows: frequency masks
        assert masked_frames > 0 and masked_bands > 0

    def test_same_seed_same_batches(self, manifest):
        kw = dict(
            train=True,
            dataset_kw={"trim_silence": True, "speed_perturbation": {}},
            features_kw={"dither": 1e-5, "spec_augment": SPEC_AUGMENT},
            batch_size=2,
        )
        a, b = loader(manifest, seed=7, **kw), loader(manifest, seed=7, **kw)
        orders = []
        for e in (0, 1):
            ea, eb = epoch(a, e), epoch(b, e)
            assert len(ea) == len(eb) == len(a) == len(RECORDINGS) // 2
            for x, y in zip(ea, eb):
                assert all(torch.equal(u, v) for u, v in zip(x, y))
            orders.append([t for x in ea for t in texts(x[2], x[3])])
        # Shuffled from the first epoch on, differently in the next one and for another seed.
        assert orders[0] != [u.transcript for u in a.utts][: len(orders[0])]
        assert orders[0] != orders[1]
        other = loader(manifest, seed=8, **{**kw, "dataset_kw": {}})
        assert [t for x in epoch(other, 0) for t in texts(x[2], x[3])] != orders[0]

    def test_epoch_reproducible_on_resume_and_after_early_exit(self, manifest):
        """Without dither, epoch e is the same from a fresh loader (resume), after an epoch that
        was left early and from the middle: order, speed factors and masks are keyed by it."""
        kw = dict(
            train=True,
            dataset_kw={"speed_perturbation": {}},
            features_kw={"spec_augment": SPEC_AUGMENT},
            seed=3,
            batch_size=2,
        )
        a = loader(manifest, **kw)
        a.set_epoch(0)
        for k, _ in enumerate(a):
            if k == 1:
                break
        after_break = epoch(a, 1)
        resumed = epoch(loader(manifest, **kw), 1)
        assert len(after_break) == len(resumed) == len(a)
        for x, y in zip(after_break, resumed):
            assert all(torch.equal(u, v) for u, v in zip(x, y))
        # Resuming inside the epoch continues with exactly the batches not yet seen.
        b = loader(manifest, **kw)
        b.set_epoch(1)
        rest = list(b.skip_batches(2))
        assert len(rest) == len(a) - 2
        for x, y in zip(rest, after_break[2:]):
            assert all(torch.equal(u, v) for u, v in zip(x, y))

    def test_two_ranks_train_equal_batches_eval_each_utterance_once(self, manifest):
        train = [loader(manifest, train=True, world_size=2, rank=r, batch_size=2) for r in (0, 1)]
        assert len(train[0]) == len(train[1]) == len(RECORDINGS) // 4  # 11 -> 2 global batches
        seen = []
        for dl in train:
            batches = epoch(dl, 0)
            assert len(batches) == len(dl)
            seen += [t for b in batches for t in texts(b[2], b[3])]
        # Disjoint shards; the incomplete global batch is dropped.
        assert len(seen) == len(set(seen)) == 8

        evals = [loader(manifest, world_size=2, rank=r, batch_size=4) for r in (0, 1)]
        seen = [t for dl in evals for b in epoch(dl, 0) for t in texts(b[2], b[3])]
        assert sorted(seen) == sorted(f"recording {w}" for w in WORDS)

    def test_unsupported_settings_are_refused(self, manifest):
        with pytest.raises(ValueError, match="gain_perturbation"):
            loader(manifest, train=True, dataset_kw={"gain_perturbation": {}})
        with pytest.raises(ValueError, match="cpu"):
            loader(manifest, device="tpu")


@pytest.mark.gpu
class TestGpu:
    pytestmark = requires_dali

    def test_gpu_features_equal_cpu_features(self, manifest):
        cpu = epoch(loader(manifest, device="cpu"), 0)
        gpu = epoch(loader(manifest, device="gpu", device_id=0), 0)
        for c, g in zip(cpu, gpu):
            assert all(t.device.type == "cuda" for t in g)
            assert torch.equal(c[1], g[1].cpu()) and torch.equal(c[2], g[2].cpu())
            assert (c[0] - g[0].cpu()).abs().max().item() <= 1e-3

    def test_gpu_training_batches_match_cpu(self, manifest):
        kw = dict(
            train=True,
            dataset_kw={"trim_silence": True, "speed_perturbation": {}},
            features_kw={"dither": 1e-5, "spec_augment": SPEC_AUGMENT},
            seed=11,
        )
        cpu = epoch(loader(manifest, device="cpu", **kw), 0)
        gpu = epoch(loader(manifest, device="gpu", device_id=0, **kw), 0)
        assert len(cpu) == len(gpu)
        for c, g in zip(cpu, gpu):
            assert g[0].device.type == "cuda" and g[0].shape == c[0].shape
            assert torch.equal(c[1], g[1].cpu()) and torch.equal(c[2], g[2].cpu())
            assert np.isfinite(g[0].cpu().numpy()).all()


@pytest.mark.dali
@pytest.mark.skipif(not dali_available(), reason=f"NVIDIA DALI cannot be imported ({DALI_INSTALL})")
def test_utterance_order_matches_the_batches(manifest):
    # inference.py names its predictions from this order, on the DALI path as on the PyTorch one.
    dl = loader(manifest, batch_size=3)
    got = [t for _, _, txt, lens in epoch(dl, 1) for t in texts(txt, lens)]
    assert [u.transcript for u in dl.utterances()] == got
    assert [u.index for u in dl.utterances()] == list(range(len(RECORDINGS)))
    with pytest.raises(ValueError, match="evaluation loader"):
        loader(manifest, train=True).utterances()
