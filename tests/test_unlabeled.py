"""Distillation on unlabeled footage: the source, the mixing ratio, the confidence masking and the teacher ensemble."""

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edgeseg.cli import main
from edgeseg.runtime.classes import CAMVID, IGNORE_INDEX
from edgeseg.runtime.datasets import open_dataset
from edgeseg.runtime.errors import ConfigError, DataError
from edgeseg.training.checkpoint import model_card, save_checkpoint
from edgeseg.training.data.unlabeled import open_unlabeled, pseudo_labels, unlabeled_batch_size, unlabeled_settings
from edgeseg.training.models import create_model
from edgeseg.training.trainer import Trainer

from test_distill import distill_config

REPO = Path(__file__).resolve().parents[1]
SAMPLE_TRAIN = REPO / "edgeseg" / "assets" / "camvid_mini" / "images" / "train"
KD = [{"name": "kd", "weight": 1.0, "student": ["logits"], "teacher": ["logits"]}]


def tiny_teacher(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = create_model("tiny_segnet", num_classes=CAMVID.num_classes)
    card = model_card(model_name="tiny_segnet", model_kwargs={}, classes=CAMVID, mean=[0.485, 0.456, 0.406],
                      std=[0.229, 0.224, 0.225], input_size=[90, 120], config={})
    return save_checkpoint(path, card, model.state_dict())


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("teachers")
    return [tiny_teacher(folder / f"teacher{seed}.pt", seed) for seed in (0, 1)]


def write_video(path: Path, frames: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (120, 90))
    for index in range(frames):
        writer.write(np.full((90, 120, 3), index * 10 % 256, dtype=np.uint8))
    writer.release()
    return path


def test_settings_take_a_bare_source_and_refuse_bad_values():
    assert unlabeled_settings("clip.mp4")["source"] == "clip.mp4"
    assert unlabeled_settings({"source": "d", "include": "0016E5_*"})["include"] == ["0016E5_*"]
    with pytest.raises(ConfigError, match="unknown distill.unlabeled keys"):
        unlabeled_settings({"source": "clip.mp4", "ratoi": 1})
    with pytest.raises(ConfigError, match="ratio must be > 0"):
        unlabeled_settings({"source": "clip.mp4", "ratio": 0})
    with pytest.raises(ConfigError, match="threshold must lie in"):
        unlabeled_settings({"source": "clip.mp4", "threshold": 1.5})
    with pytest.raises(ConfigError, match="needs a 'source'"):
        unlabeled_settings({"ratio": 1.0})


def test_image_folder_is_sampled_by_pattern_stride_and_count():
    frames = open_unlabeled(unlabeled_settings({"source": str(SAMPLE_TRAIN), "include": ["0006R0_*"],
                                                "stride": 3, "max_frames": 5}))
    everything = sorted(p for p in SAMPLE_TRAIN.iterdir() if p.stem.startswith("0006R0_"))
    assert [p.name for p in frames.paths] == [p.name for p in everything[::3][:5]]
    assert frames.read_image(0).shape[2] == 3


def test_video_is_decoded_once_at_its_stride_into_a_cache(tmp_path, monkeypatch):
    video = write_video(tmp_path / "clip.avi", 12)
    settings = unlabeled_settings({"source": str(video), "stride": 4, "cache_dir": str(tmp_path / "cache")})
    frames = open_unlabeled(settings)
    assert [p.name for p in frames.paths] == ["frame_0000000.png", "frame_0000004.png", "frame_0000008.png"]
    assert abs(int(frames.read_image(1).mean()) - 40) <= 3  # the 5th frame (grey 40) survived decode and cache
    assert not list((tmp_path / "cache").glob("*.partial"))

    def no_decoding(*_args, **_kwargs):
        raise AssertionError("the cached frames should have been reused")

    monkeypatch.setattr("edgeseg.runtime.video.sources.open_source", no_decoding)
    assert open_unlabeled(settings).paths == frames.paths


@pytest.mark.parametrize("case", ["missing", "not_a_video", "empty_folder", "no_match"])
def test_broken_sources_fail_with_one_line_naming_them(case, tmp_path):
    source, extra = tmp_path / "nothing.mp4", {}
    if case == "not_a_video":
        source.write_bytes(b"this is not a video")
    elif case == "empty_folder":
        source = tmp_path / "empty"
        source.mkdir()
    elif case == "no_match":
        source, extra = SAMPLE_TRAIN, {"include": ["9999XX_*"]}
    with pytest.raises(DataError) as caught:
        open_unlabeled(unlabeled_settings({"source": str(source), "cache_dir": str(tmp_path / "c"), **extra}))
    assert str(source) in str(caught.value) and "\n" not in str(caught.value)


def test_train_cli_refuses_a_broken_source_before_training(teachers, tmp_path, capsys):
    code = main(["train", str(REPO / "configs" / "smoke.yaml"), "--out", str(tmp_path / "run"),
                 "--set", "model.name=tiny_segnet",
                 "--set", "data.workers=0", "--set", f"distill.teacher={teachers[0]}",
                 "--set", "distill.losses=[{name: kd}]", "--set", f"distill.unlabeled={tmp_path / 'gone.mp4'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "gone.mp4" in err[0]
    assert not (tmp_path / "run" / "last.pt").exists()


def test_pseudo_labels_keep_only_confident_pixels():
    probabilities = torch.tensor([[0.9, 0.6, 0.2], [0.1, 0.4, 0.8]])[None, :, None, :]  # (1, 2 classes, 1, 3)
    assert pseudo_labels(probabilities, 0.7).tolist() == [[[0, IGNORE_INDEX, 1]]]
    assert pseudo_labels(probabilities, 0.0).tolist() == [[[0, 0, 1]]]


def test_unlabeled_frames_join_every_batch_at_the_ratio_without_changing_the_labeled_stream(teachers, tmp_path):
    seen = {}
    for name, extra in (("source", {}), ("mixed", {"unlabeled": {"source": str(SAMPLE_TRAIN), "ratio": 0.5,
                                                                   "threshold": 0.0}})):
        config = distill_config(teachers[0], KD, **extra)
        trainer = Trainer(config, tmp_path / name)
        real_step, batches = trainer.train_step, []

        def recording_step(images, labels, unlabeled=None, real_step=real_step, batches=batches):
            batches.append((images.clone(), None if unlabeled is None else unlabeled.shape[0]))
            return real_step(images, labels, unlabeled)

        trainer.train_step = recording_step
        trainer.fit()
        seen[name] = (batches, trainer.history)
    labeled = config["data"]["batch_size"]
    assert [count for _, count in seen["mixed"][0]] == [unlabeled_batch_size(labeled, 0.5)] * 2 == [2, 2]
    for (a, _), (b, _) in zip(seen["source"][0], seen["mixed"][0]):
        assert torch.equal(a, b)  # the labeled crops are those of the source-only run
    row = [r for r in seen["mixed"][1] if "step_s" in r][-1]
    assert row["pseudo_share"] == pytest.approx(1.0)  # threshold 0: every unlabeled pixel is pseudo-labelled
    assert row["pseudo_ce"] > 0 and "pseudo_ce" not in [r for r in seen["source"][1] if "step_s" in r][-1]


def test_losses_that_need_labels_see_the_teachers_confident_classes_on_unlabeled_frames(teachers, tmp_path):
    config = distill_config(teachers[0], [{"name": "ace", "student": ["output"], "teacher": ["output"]}],
                            unlabeled={"source": str(SAMPLE_TRAIN), "ratio": 0.5})
    trainer = Trainer(config, tmp_path)
    captured = {}
    real_losses = trainer.distiller.losses

    def capturing(labels):
        captured["labels"] = labels.clone()
        captured["probabilities"] = trainer.distiller.teacher_probabilities()
        return real_losses(labels)

    trainer.distiller.losses = capturing
    images, labels = next(trainer._labeled_batches())
    extra = next(trainer._unlabeled_batches())
    with torch.no_grad():  # an untrained teacher is unsure everywhere: mask at its median confidence
        threshold = torch.softmax(trainer.distiller.teacher(extra), 1).amax(1).median().item()
    trainer.unlabeled_settings["threshold"] = threshold
    trainer.train_step(images, labels, extra)
    merged, labeled = captured["labels"], labels.shape[0]
    assert merged.shape[0] == labeled + extra.shape[0]
    assert torch.equal(merged[:labeled], labels)  # ground truth where there is some
    expected = pseudo_labels(captured["probabilities"][labeled:], threshold)
    assert torch.equal(merged[labeled:], expected)
    assert (expected == IGNORE_INDEX).any() and (expected != IGNORE_INDEX).any()  # the threshold masks some


def test_an_ensemble_averages_the_teachers_probabilities(teachers, tmp_path):
    config = distill_config(teachers[0], KD)
    del config["distill"]["teacher"]
    config["distill"]["teachers"] = [str(p) for p in teachers]
    trainer = Trainer(config, tmp_path)
    distiller = trainer.distiller
    images = torch.rand(2, 3, 64, 96)
    trainer.model(images)
    distiller.teach(images)
    ensemble_tap, probabilities = distiller.teacher_taps.outputs["logits"], distiller.teacher_probabilities()
    with torch.no_grad():  # (these forwards re-record the taps: the ensemble's were read above)
        outputs = [torch.softmax(t(images), 1) for t in distiller.teachers]
        taps = []
        for teacher in distiller.teachers:  # each teacher's own logits tap, one at a time
            holder = {}
            handle = teacher.get_submodule(distiller.teacher_taps.paths["logits"]).register_forward_hook(
                lambda _m, _i, out, holder=holder: holder.setdefault("logits", out))
            teacher(images)
            handle.remove()
            taps.append(torch.softmax(holder["logits"], 1))
    # The teachers differ by ~3e-3 somewhere, so one teacher alone misses the mean by ~1e-3; convolution kernels
    # differ between the training-time and these forwards by up to ~1e-5 on some CPUs (AVX-512 oneDNN paths).
    assert len(distiller.teachers) == 2 and (outputs[0] - outputs[1]).abs().max() > 1e-3
    assert torch.allclose(probabilities, (outputs[0] + outputs[1]) / 2, atol=1e-4)
    assert torch.allclose(torch.softmax(ensemble_tap, 1), (taps[0] + taps[1]) / 2, atol=1e-4)
    trainer.model(images)
    distiller.teach(images)
    total, _ = distiller.losses(torch.zeros(2, 64, 96, dtype=torch.long))
    assert torch.isfinite(total)


def test_teacher_and_teachers_are_exclusive(teachers, tmp_path):
    config = distill_config(teachers[0], KD, teachers=[str(teachers[1])])
    with pytest.raises(ConfigError, match="one of the two"):
        Trainer(config, tmp_path)


def test_sequence_selection_of_a_dataset():
    train = open_dataset("camvid", "train")
    chosen = train.select(["0001TP_*", "0006R0_*"])
    assert 0 < len(chosen) < len(train)
    assert all(chosen.paths(i)[0].stem[:6] in ("0001TP", "0006R0") for i in range(len(chosen)))
    assert "include" in repr(chosen)
    with pytest.raises(DataError, match="no camvid train image matches"):
        train.select(["nothing_*"])


def test_cache_folder_is_keyed_by_sampling(tmp_path):
    video = write_video(tmp_path / "clip.avi", 6)
    first = open_unlabeled(unlabeled_settings({"source": str(video), "stride": 2, "cache_dir": str(tmp_path)}))
    second = open_unlabeled(unlabeled_settings({"source": str(video), "stride": 3, "cache_dir": str(tmp_path)}))
    assert first.paths[0].parent != second.paths[0].parent and len(first) == 3 and len(second) == 2


def test_flicker_benchmark_reports_flicker_and_agreement(teachers, tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import flicker

    video = write_video(tmp_path / "clip.avi", 5)
    out = tmp_path / "flicker"
    flicker.main([f"a={teachers[0]}", f"b={teachers[1]}", "--reference", "a", "--video", str(video), "--out",
                  str(out)])
    record = json.loads(out.with_suffix(".json").read_text())
    rows = {row["model"]: row for row in record["rows"]}
    assert record["frames"] == 5 and rows["a"]["frame_pairs"] == 4
    assert "agreement" not in rows["a"] and 0.0 <= rows["b"]["agreement"] <= 1.0
    assert 0.0 <= rows["b"]["overall"] <= 1.0
    assert "| b |" in out.with_suffix(".md").read_text()


def test_flicker_benchmark_pairs_a_sweeps_arms_by_seed():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import flicker

    rows = [{"model": "plain_s0", "agreement": 0.60, "overall": 0.030},
            {"model": "plain_s1", "agreement": 0.62, "overall": 0.028},
            {"model": "plain_s2", "agreement": 0.61, "overall": 0.029},
            {"model": "dsd_s0", "agreement": 0.63, "overall": 0.027},
            {"model": "dsd_s1", "agreement": 0.66, "overall": 0.026},
            {"model": "teacher", "overall": 0.02}]  # not a sweep run: left out of the pairs
    (entry,) = flicker.paired_by_seed(rows)
    assert entry["arm"] == "dsd" and entry["agreement"]["n"] == 2  # seed 2 has no dsd run
    assert entry["agreement"]["diff"] == pytest.approx(0.035)
    assert entry["overall"]["diff"] == pytest.approx(-0.0025)
    assert flicker.paired_by_seed(rows[3:]) == []  # no plain arm: nothing to pair with
