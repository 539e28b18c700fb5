"""Manifests, AudioDataset, samplers and FeatureLoader (common.dataset): the manifests upstream's
utils/convert_librispeech.py writes, read with the semantics of upstream's AudioDataset
(common/dataset.py)."""

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from common.audio import SpeedPerturbation
from common.dataset import (
    AudioDataset,
    EvalSampler,
    FeatureLoader,
    ManifestError,
    MissingAudioError,
    TrainSampler,
    collate_fn,
    find_missing_files,
    get_data_loader,
    read_manifests,
)
from common.features import FilterbankFeatures
from common.text import DEFAULT_LABELS, ids_to_text, normalize, text_to_ids
from tests.conftest import SAMPLE_RATE as SR
from tests.conftest import file_entry, manifest_entry, write_manifest

LABELS = DEFAULT_LABELS


def write_wav(path: Path, n_samples: int, seed: int = 0, silence: int = 0) -> None:
    """A noisy 220 Hz tone of ``n_samples`` (+ ``silence`` zeros at both ends), 16-bit PCM."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / SR
    x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(n_samples)
    x = np.concatenate([np.zeros(silence), x, np.zeros(silence)])
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x.astype(np.float32), SR, subtype="PCM_16")


# Single-file utterances: (seconds, transcript).
PLAIN = [(0.05, "too short"), (0.5, "Hello, World!"), (1.0, "the 2 cats"), (2.0, "a long one"),
         (3.0, "too long")]  # fmt: skip
BASE = 12000  # samples of the offline-speed utterance's speed-1.0 file
VARIANTS = {0.9: round(BASE / 0.9), 1.1: round(BASE / 1.1), 1: BASE}  # sox speed s: length / s


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """``tmp_path`` with plain.json (PLAIN) and offline.json (one entry, speeds 0.9, 1.1, 1 in
    the upstream order, speed-1.0 last)."""
    plain = []
    for k, (seconds, text) in enumerate(PLAIN):
        n = int(seconds * SR)
        write_wav(tmp_path / f"wav/p{k}.wav", n, seed=k)
        plain.append(manifest_entry(text, [file_entry(f"wav/p{k}.wav", n)]))
    write_manifest(tmp_path / "plain.json", plain)
    files = []
    for speed, n in VARIANTS.items():
        name = "wav/s.wav" if speed == 1 else f"wav/s-{speed}.wav"
        write_wav(tmp_path / name, n, seed=99)
        files.append(file_entry(name, n, speed))
    write_manifest(tmp_path / "offline.json", [manifest_entry("offline speeds", files)])
    return tmp_path


def test_dataset_signature_is_the_contract():
    # jasper.config validates YAML audio_dataset sections against these exact names.
    names = list(inspect.signature(AudioDataset).parameters)
    assert names == [
        "data_dir", "manifest_fpaths", "labels", "sample_rate", "min_duration", "max_duration",
        "pad_to_max_duration", "max_utts", "normalize_transcripts", "sort_by_duration",
        "trim_silence", "speed_perturbation", "gain_perturbation", "shift_perturbation",
        "ignore_offline_speed_perturbation", "seed",
    ]  # fmt: skip


def test_duration_filter_max_utts_and_several_manifests(corpus):
    utts = read_manifests(["plain.json", "offline.json"], corpus, LABELS, max_duration=2.5)
    assert [u.duration for u in utts] == [0.5, 1.0, 2.0, BASE / SR]
    # index: position in the concatenated manifests, before filtering.
    assert [u.index for u in utts] == [1, 2, 3, 5]
    utts = read_manifests(["plain.json"], corpus, LABELS, min_duration=0.9, max_duration=3.0)
    assert [u.duration for u in utts] == [1.0, 2.0, 3.0]
    utts = read_manifests(["plain.json", "offline.json"], corpus, LABELS, max_utts=2)
    assert [u.duration for u in utts] == [0.5, 1.0]
    # pad_to_max_duration with offline variants filters on the longest variant, as upstream's
    # AudioDataset does unless ignore_offline_speed_perturbation.
    longest = max(VARIANTS.values()) / SR
    kw = {"max_duration": (BASE / SR + longest) / 2, "pad_to_max_duration": True}
    assert read_manifests(["offline.json"], corpus, LABELS, **kw) == []
    kept = read_manifests(
        ["offline.json"], corpus, LABELS, ignore_offline_speed_perturbation=True, **kw
    )
    assert len(kept) == 1


def test_manifest_paths_absolute_or_relative_to_cwd(corpus, monkeypatch):
    assert len(read_manifests([corpus / "plain.json"], corpus, LABELS)) == 4
    monkeypatch.chdir(corpus.parent)
    rel = Path(corpus.name)  # a relative DATA_DIR and "$DATA_DIR/plain.json"
    utts = read_manifests([rel / "plain.json"], rel, LABELS)
    assert len(utts) == 4 and utts[0].files[0].path == rel / "wav/p1.wav"


def test_transcripts_normalised_once_at_load(corpus):
    utts = read_manifests(["plain.json"], corpus, LABELS)
    for u, (_, raw) in zip(utts, PLAIN[1:]):
        assert u.transcript == normalize(raw, LABELS)
        assert u.ids == text_to_ids(u.transcript, LABELS)
    assert utts[0].transcript == "hello world"
    assert utts[1].transcript == "the two cats"
    raw = read_manifests(["plain.json"], corpus, LABELS, normalize_transcripts=False)
    assert raw[0].transcript == "Hello, World!"
    assert raw[0].ids == text_to_ids("Hello, World!", LABELS)  # unknown characters dropped


def test_empty_transcripts_dropped(corpus):
    write_wav(corpus / "e.wav", SR)
    entries = [
        manifest_entry("?!", [file_entry("e.wav", SR)]),
        manifest_entry("ok", [file_entry("e.wav", SR)]),
    ]
    write_manifest(corpus / "empty.json", entries)
    utts = read_manifests(["empty.json"], corpus, LABELS)
    assert [u.transcript for u in utts] == ["ok"]


def test_sort_by_duration(corpus):
    utts = read_manifests(["offline.json", "plain.json"], corpus, LABELS, sort_by_duration=True)
    assert [u.duration for u in utts] == sorted(u.duration for u in utts)


@pytest.mark.parametrize("order", [(0.9, 1.1, 1), (1, 0.9, 1.1), (0.9, 1, 1.1)])
def test_ignore_offline_speed_keeps_speed_one_by_field(corpus, order):
    files = json.loads((corpus / "offline.json").read_text())[0]["files"]
    by_speed = {f["speed"]: f for f in files}
    write_manifest(corpus / "o.json", [manifest_entry("x", [by_speed[s] for s in order])])
    utts = read_manifests(["o.json"], corpus, LABELS, ignore_offline_speed_perturbation=True)
    assert [(f.path, f.speed) for f in utts[0].files] == [(corpus / "wav/s.wav", 1.0)]
    ds = AudioDataset(corpus, ["o.json"], LABELS, ignore_offline_speed_perturbation=True)
    for epoch in range(5):
        ds.set_epoch(epoch)
        assert ds[0][0].numel() == BASE


def test_offline_variant_drawn_per_access(corpus):
    ds = AudioDataset(corpus, ["offline.json"], LABELS, seed=3)
    assert len(ds.utts[0].files) == 3
    lengths = []
    for epoch in range(30):
        ds.set_epoch(epoch)
        n = ds[0][0].numel()
        chosen = ds.utts[0].files[np.random.default_rng((3, epoch, 0)).integers(3)]
        assert n == VARIANTS[chosen.speed]
        lengths.append(n)
    assert set(lengths) == set(VARIANTS.values())


@pytest.mark.parametrize("discrete", [False, True])
def test_speed_perturbation_scales_length_by_drawn_factor(corpus, discrete):
    kw = {"min_rate": 0.85, "max_rate": 1.15, "discrete": discrete, "p": 1.0}
    ds = AudioDataset(corpus, ["plain.json"], LABELS, speed_perturbation=kw, seed=7)
    factors = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        for i, u in enumerate(ds.utts):
            factor = SpeedPerturbation(**kw).draw(np.random.default_rng((7, epoch, i)))
            n = round(u.duration * SR)
            assert abs(ds[i][0].numel() - n * factor) <= 1
            factors.add(factor)
    if discrete:
        assert factors == {0.85, 1.0, 1.15}
    else:
        assert len(factors) > 10 and all(0.85 <= f <= 1.15 for f in factors)


def test_trim_silence(corpus):
    write_wav(corpus / "quiet.wav", SR, silence=SR // 2)
    write_manifest(corpus / "q.json", [manifest_entry("quiet", [file_entry("quiet.wav", 2 * SR)])])
    full = AudioDataset(corpus, ["q.json"], LABELS)[0][0].numel()
    trimmed = AudioDataset(corpus, ["q.json"], LABELS, trim_silence=True)[0][0].numel()
    assert full == 2 * SR and SR <= trimmed < SR + 2 * 2048  # trim works in 2048-sample frames


def test_collate_pads_with_zeros():
    batch = [(torch.ones(3), torch.tensor([1, 2])), (torch.ones(5), torch.tensor([3]))]
    audio, audio_lens, txt, txt_lens = collate_fn(batch)
    assert audio.dtype == torch.float32 and txt.dtype == torch.int64
    assert audio_lens.dtype == txt_lens.dtype == torch.int32
    assert audio.tolist() == [[1, 1, 1, 0, 0], [1] * 5]
    assert txt.tolist() == [[1, 2], [3, 0]]
    assert audio_lens.tolist() == [3, 5] and txt_lens.tolist() == [2, 1]


def test_loader_deterministic_across_num_workers(corpus):
    speed = {"min_rate": 0.85, "max_rate": 1.15, "discrete": False, "p": 1.0}
    ds = AudioDataset(corpus, ["plain.json", "offline.json"], LABELS, speed_perturbation=speed)
    runs = []
    for workers in (0, 2):
        loader = get_data_loader(ds, 2, train=True, seed=5, num_workers=workers)
        epochs = []
        for epoch in (0, 1):
            loader.batch_sampler.set_epoch(epoch)
            ds.set_epoch(epoch)
            epochs.append([b for b in loader])
        runs.append(epochs)
    for epoch_a, epoch_b in zip(*runs):
        assert len(epoch_a) == len(epoch_b) == 2
        for batch_a, batch_b in zip(epoch_a, epoch_b):
            for a, b in zip(batch_a, batch_b):
                assert torch.equal(a, b)
    # A new epoch, a new order and new speed factors.
    assert any(not torch.equal(a, b) for a, b in zip(runs[0][0][0], runs[0][1][0]))


def test_worker_init_sets_one_thread(corpus):
    loader = get_data_loader(
        AudioDataset(corpus, ["plain.json"], LABELS), 2, train=False, num_workers=1
    )
    before = torch.get_num_threads()
    try:
        loader.worker_init_fn(0)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert get_data_loader(loader.dataset, 2, train=False, num_workers=0).worker_init_fn is None


def train_epoch(num_utts, batch_size, world_size, epoch, seed=0, **kw):
    ranks = []
    for rank in range(world_size):
        s = TrainSampler(num_utts, batch_size, world_size, rank, seed, **kw)
        s.set_epoch(epoch)
        ranks.append(list(s))
        assert len(ranks[-1]) == len(s)
    return ranks


@pytest.mark.parametrize("world_size", [2, 3])
def test_train_sampler_equal_counts_shuffled_per_epoch(world_size):
    n, bs = 103, 4
    e0 = train_epoch(n, bs, world_size, epoch=0)
    assert all(len(r) == n // (bs * world_size) for r in e0)  # same count on every rank
    assert all(len(b) == bs for r in e0 for b in r)
    flat = [i for r in e0 for b in r for i in b]
    assert len(set(flat)) == len(flat)  # no repeats within an epoch
    # The first epoch is shuffled too: utterances, not just the order of contiguous chunks.
    assert any(max(b) - min(b) >= bs * world_size for b in e0[0])
    e1 = train_epoch(n, bs, world_size, epoch=1)
    assert e0 != e1
    assert e0 == train_epoch(n, bs, world_size, epoch=0)  # deterministic for (seed, epoch)
    assert e0 != train_epoch(n, bs, world_size, epoch=0, seed=1)


def test_train_sampler_without_drop_last_covers_everything():
    ranks = train_epoch(10, 4, 2, epoch=0, drop_last=False)
    assert [len(r) for r in ranks] == [2, 2]
    assert {i for r in ranks for b in r for i in b} == set(range(10))


def test_train_sampler_rejects_too_little_data():
    with pytest.raises(ValueError, match="global batch"):
        TrainSampler(7, 4, world_size=2, rank=0)


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("num_utts", [10, 11, 2])
def test_eval_sampler_every_utterance_exactly_once(world_size, strided, num_utts):
    seen = []
    for rank in range(world_size):
        s = EvalSampler(num_utts, 3, world_size, rank, strided=strided)
        batches = list(s)
        assert len(batches) == len(s)
        seen += [i for b in batches for i in b]
    assert sorted(seen) == list(range(num_utts))


def test_bucketing_groups_similar_durations():
    rng = np.random.default_rng(0)
    durations = rng.uniform(1.0, 20.0, 400).tolist()

    def mean_spread(**kw):
        ranks = train_epoch(400, 8, 2, epoch=3, **kw)
        assert len(ranks[0]) == len(ranks[1]) == 400 // 16
        flat = [i for r in ranks for b in r for i in b]
        assert len(set(flat)) == len(flat)
        d = np.asarray(durations)
        return np.mean([np.ptp(d[b]) for r in ranks for b in r])

    assert mean_spread(durations=durations, num_buckets=10) < 0.25 * mean_spread()
    # Batches come in random order (not shortest first), and differ between epochs.
    e3 = train_epoch(400, 8, 2, epoch=3, durations=durations, num_buckets=10)[0]
    means = [np.mean([durations[i] for i in b]) for b in e3]
    assert means != sorted(means)
    assert e3 != train_epoch(400, 8, 2, epoch=4, durations=durations, num_buckets=10)[0]


def test_missing_files_reported_at_start(corpus):
    entries = [manifest_entry(f"u {k}", [file_entry(f"gone/{k}.wav", SR)]) for k in range(13)]
    write_manifest(corpus / "missing.json", entries)
    utts = read_manifests(["missing.json", "plain.json"], corpus, LABELS)
    assert find_missing_files(utts) == [corpus / f"gone/{k}.wav" for k in range(13)]
    with pytest.raises(MissingAudioError) as err:
        AudioDataset(corpus, ["plain.json", "missing.json"], LABELS)
    msg = str(err.value)
    assert "13 audio file(s)" in msg
    assert str(corpus / "gone/0.wav") in msg and str(corpus / "gone/9.wav") in msg
    assert str(corpus / "gone/10.wav") not in msg and "3 more" in msg
    assert len(err.value.missing) == 13


ONE_FILE = [{"fname": "x.wav", "duration": 1}]
MALFORMED = [
    ("[{]", r"not valid JSON"),
    (json.dumps({"files": ONE_FILE}), r"expected a JSON list"),
    (json.dumps([{"transcript": "a", "files": ONE_FILE}, {"transcript": "b"}]),
     r"entry 1: missing 'files'"),
    (json.dumps([{"files": ONE_FILE}]), r"entry 0: missing 'transcript'"),
    (json.dumps([{"transcript": "a", "files": [{"duration": 1}]}]),
     r"entry 0: files\[0\]: missing 'fname'"),
]  # fmt: skip


@pytest.mark.parametrize("text, match", MALFORMED)
def test_malformed_manifest_names_file_and_entry(tmp_path, text, match):
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(ManifestError, match=match) as err:
        read_manifests(["bad.json"], tmp_path, LABELS)
    assert str(tmp_path / "bad.json") in str(err.value)


def test_missing_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        read_manifests(["nope.json"], tmp_path, LABELS)


def test_feature_loader_yields_features_on_device(corpus):
    ds = AudioDataset(corpus, ["plain.json", "offline.json"], LABELS)
    loader = get_data_loader(ds, 2, train=False, num_workers=0)
    features = FilterbankFeatures(dither=0.0).eval()
    fl = FeatureLoader(loader, features, "cpu")
    assert len(fl) == len(loader) == 3
    out = list(fl)
    assert len(out) == 3
    for (feats, feat_lens, txt, txt_lens), (audio, audio_lens, txt0, txt_lens0) in zip(out, loader):
        assert feats.dtype == torch.float32 and feats.shape[:2] == (audio.shape[0], 64)
        assert feat_lens.dtype == txt.dtype == txt_lens.dtype == torch.int64
        assert torch.equal(feat_lens, features.feature_lengths(audio_lens))
        ref, ref_lens = features(audio, audio_lens)
        assert torch.equal(feats, ref) and torch.equal(feat_lens, ref_lens)
        assert torch.equal(txt, txt0) and torch.equal(txt_lens, txt_lens0.long())


def test_feature_loader_utterance_order_matches_its_batches(corpus):
    # inference.py names its predictions from this order: it must be the order of the texts.
    ds = AudioDataset(corpus, ["plain.json", "offline.json"], LABELS)
    fl = FeatureLoader(get_data_loader(ds, 2, train=False, num_workers=0), FilterbankFeatures())
    order = fl.utterances()
    texts = [
        ids_to_text(t[:n].tolist(), LABELS) for _, _, txt, lens in fl for t, n in zip(txt, lens)
    ]
    assert [u.transcript for u in order] == texts
    assert [u.index for u in order] == [1, 2, 3, 4, 5]  # positions in the manifests (0 too short)
    train_fl = FeatureLoader(get_data_loader(ds, 2, train=True), FilterbankFeatures())
    with pytest.raises(ValueError, match="evaluation loader"):
        train_fl.utterances()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_feature_loader_on_cuda(corpus):
    ds = AudioDataset(corpus, ["plain.json"], LABELS)
    fl = FeatureLoader(get_data_loader(ds, 2, train=True), FilterbankFeatures(), "cuda")
    fl.set_epoch(1)
    with torch.autocast("cuda", dtype=torch.float16):
        feats, feat_lens, txt, txt_lens = next(iter(fl))
    assert feats.is_cuda and feats.dtype == torch.float32
    assert feat_lens.is_cuda and txt.is_cuda and txt_lens.is_cuda
