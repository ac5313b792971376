"""Distillation wiring: hooks, config validation, and tiny end-to-end runs whose student checkpoints stay plain."""

from pathlib import Path

import pytest
import torch

from edgeseg.runtime.classes import CAMVID
from edgeseg.runtime.errors import ConfigError
from edgeseg.training.checkpoint import load_checkpoint, model_card, save_checkpoint
from edgeseg.training.config import resolve_config
from edgeseg.training.distill.hooks import FeatureTaps, resolve_layer
from edgeseg.training.models import create_model
from edgeseg.training.trainer import Trainer

from test_training import TINY


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory) -> Path:
    """An (untrained) tiny teacher checkpoint with the CamVid classes; its weights do not matter for wiring tests."""
    torch.manual_seed(0)
    model = create_model("tiny_segnet", num_classes=CAMVID.num_classes)
    card = model_card(model_name="tiny_segnet", model_kwargs={}, classes=CAMVID, mean=[0.485, 0.456, 0.406],
                      std=[0.229, 0.224, 0.225], input_size=[90, 120], config={})
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    return save_checkpoint(path, card, model.state_dict())


def distill_config(teacher_path, losses, **extra):
    config = resolve_config(None, [*TINY, "train.iterations=2", "train.val_every=2"])
    config["distill"] = {"teacher": str(teacher_path), "losses": losses, **extra}
    return config


METHODS = {
    "kd": [{"name": "kd", "weight": 1.0, "student": ["logits"], "teacher": ["logits"]}],
    "cwd": [{"name": "cwd", "weight": 3.0, "student": "logits", "params": {"temperature": 4.0}}],
    "skd_pairwise": [{"name": "skd_pairwise", "weight": 10.0, "student": ["feature"], "teacher": ["feature"]}],
    "dsd": [{"name": "dsd", "student": ["stage2", "stage3", "feature", "logits"],
             "teacher": ["stage2", "stage3", "feature", "logits"]}],
    "csc_ace": [{"name": "csc", "weight": 10.0, "student": ["feature"], "teacher": ["stage3"]},
                {"name": "ace", "student": ["output"], "teacher": ["output"]}],
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_distilled_student_checkpoint_holds_only_student_weights(method, teacher_path, tmp_path):
    trainer = Trainer(distill_config(teacher_path, METHODS[method]), tmp_path)
    adapters = sum(p.numel() for p in trainer.distiller.parameters())
    result = trainer.fit()
    assert result["iterations"] == 2
    rows = [row for row in trainer.history if "step_s" in row]
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in rows)
    assert {spec["name"] for spec in trainer.distiller.specs} <= set(rows[-1])  # each loss is logged
    card = load_checkpoint(tmp_path / "last.pt")
    plain = create_model("tiny_segnet", num_classes=11)
    assert set(card["state_dict"]) == set(plain.state_dict())  # no adapter, no teacher key
    plain.load_state_dict(card["state_dict"], strict=True)
    assert sum(v.numel() for v in card["state_dict"].values()) == sum(v.numel() for v in plain.state_dict().values())
    if adapters:  # the adapters' weights are kept only in the resumable training state
        assert card["train_state"]["distiller"]
    # hooks are gone after the run: a fresh forward records nothing
    assert not any(module._forward_hooks for module in trainer.model.modules())
    assert not any(module._forward_hooks for module in trainer.distiller.teacher.modules())


def test_teacher_is_frozen_and_in_eval_mode(teacher_path, tmp_path):
    trainer = Trainer(distill_config(teacher_path, METHODS["kd"]), tmp_path)
    before = {k: v.clone() for k, v in trainer.distiller.teacher.state_dict().items()}
    trainer.fit()
    teacher = trainer.distiller.teacher
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    for key, value in teacher.state_dict().items():  # BN running stats included: eval mode never updates them
        assert torch.equal(value, before[key]), key


def test_knowledge_adaptation_trains_and_caches_its_autoencoder(teacher_path, tmp_path, capsys):
    losses = [{"name": "ka", "student": ["feature"], "teacher": ["feature"], "params": {"latent_channels": 16}}]
    cache = tmp_path / "cache"
    auto = {"iterations": 3, "batch_size": 2, "cache_dir": str(cache)}
    Trainer(distill_config(teacher_path, losses, autoencoder=auto), tmp_path / "a").fit()
    assert "training" in capsys.readouterr().out
    cached = list(cache.glob("*.pt"))
    assert len(cached) == 1 and "tiny_segnet" in cached[0].name and "feature" in cached[0].name
    trainer = Trainer(distill_config(teacher_path, losses, autoencoder=auto), tmp_path / "b")
    assert "loaded from" in capsys.readouterr().out
    encoder_params = {id(p) for p in trainer.distiller.criteria[0].encoder.parameters()}
    assert not encoder_params & {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    trainer.fit()
    assert set(load_checkpoint(tmp_path / "b" / "last.pt")["state_dict"]) == \
        set(create_model("tiny_segnet", num_classes=11).state_dict())
    # Another autoencoder learning rate is another encoder: trained anew, cached beside the first.
    Trainer(distill_config(teacher_path, losses, autoencoder={**auto, "lr": 0.05}), tmp_path / "c")
    assert "training" in capsys.readouterr().out and len(list(cache.glob("*.pt"))) == 2


def test_autoencoder_stride_setting_reaches_the_cached_encoder(teacher_path, tmp_path, capsys):
    losses = [{"name": "ka", "student": ["feature"], "teacher": ["feature"], "params": {"latent_channels": 8}}]
    auto = {"iterations": 2, "batch_size": 2, "cache_dir": str(tmp_path / "cache"), "stride": 2}
    Trainer(distill_config(teacher_path, losses, autoencoder=auto), tmp_path / "a")
    (cached,) = (tmp_path / "cache").glob("*.pt")
    state = torch.load(cached, weights_only=True)
    assert state["stride"] == 2
    trainer = Trainer(distill_config(teacher_path, losses, autoencoder=auto), tmp_path / "b")
    assert "loaded from" in capsys.readouterr().out
    encoder = trainer.distiller.criteria[0].encoder
    assert encoder(torch.zeros(1, state["channels"], 10, 12)).shape[-2:] == (5, 6)


def test_config_errors_name_the_problem(teacher_path, tmp_path):
    with pytest.raises(ConfigError, match="no layer or tap named 'featur'.*closest: feature"):
        Trainer(distill_config(teacher_path, [{"name": "kd", "student": ["featur"]}]), tmp_path / "a")
    with pytest.raises(ConfigError, match="unknown keys"):
        Trainer(distill_config(teacher_path, [{"name": "kd", "wieght": 2}]), tmp_path / "b")
    with pytest.raises(ConfigError, match="pairs 2 student layers with 1"):
        Trainer(distill_config(teacher_path, [{"name": "psd", "student": ["stage2", "stage3"],
                                               "teacher": ["stage3"]}]), tmp_path / "c")
    with pytest.raises(ConfigError, match="distill loss 'nope'"):
        Trainer(distill_config(teacher_path, [{"name": "nope"}]), tmp_path / "d")
    with pytest.raises(ConfigError, match="empty"):
        Trainer(distill_config(teacher_path, []), tmp_path / "e")


def test_teacher_with_other_classes_is_refused(tmp_path):
    model = create_model("tiny_segnet", num_classes=3)
    from edgeseg.runtime.classes import ClassSpec

    spec = ClassSpec("toy", ("a", "b", "c"), ((0, 0, 0), (1, 1, 1), (2, 2, 2)))
    card = model_card(model_name="tiny_segnet", model_kwargs={}, classes=spec, mean=[0, 0, 0], std=[1, 1, 1],
                      input_size=[64, 64], config={})
    path = save_checkpoint(tmp_path / "toy.pt", card, model.state_dict())
    with pytest.raises(ConfigError, match="predicts"):
        Trainer(distill_config(path, METHODS["kd"]), tmp_path / "run")


def test_feature_taps_record_and_remove_hooks():
    model = create_model("tiny_segnet", num_classes=5).eval()
    assert resolve_layer(model, "feature") == "context"
    assert resolve_layer(model, "output") == ""
    with FeatureTaps(model, ["stage2", "logits", "output", "backbone.0"]) as taps:
        out = model(torch.zeros(1, 3, 64, 64))
        stage2, logits, output, first = taps.take(["stage2", "logits", "output", "backbone.0"])
        assert stage2.shape == (1, 32, 16, 16) and logits.shape == (1, 5, 8, 8)
        assert torch.equal(output, out) and first.shape[1] == 16
    assert not any(module._forward_hooks for module in model.modules())


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_configs_resolve_and_their_losses_build(path):
    from edgeseg.training.distill.distiller import Distiller
    from edgeseg.training.distill.losses import build_loss
    from edgeseg.training.models import taps_of

    config = resolve_config(path)
    student = create_model(config["model"]["name"], num_classes=11, **config["model"]["kwargs"])
    for index, spec in enumerate((config.get("distill") or {}).get("losses", [])):
        spec = Distiller._check_spec(spec, index)
        taps = taps_of(student)
        channels = [taps[name].channels if name in taps else 11 for name in spec["student"]]
        build_loss(spec["name"], student_channels=channels, teacher_channels=channels, **spec["params"])


def test_distillation_configs_are_what_their_generator_writes(tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    shipped = repo / "configs" / "distill"
    subprocess.run([sys.executable, str(repo / "benchmarks" / "make_distill_configs.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.yaml"))
    assert generated == sorted(p.relative_to(shipped) for p in shipped.rglob("*.yaml"))
    for relative in generated:
        assert (tmp_path / relative).read_text() == (shipped / relative).read_text(), relative


def test_teacher_precision_setting(monkeypatch):
    from edgeseg.training import amp

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert amp.teacher_autocast_dtype("off", cpu, None) is None
    assert amp.teacher_autocast_dtype("bf16", cpu, None) is torch.bfloat16
    assert amp.teacher_autocast_dtype("auto", cuda, torch.float16) is torch.float16  # follows the training AMP
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: False)
    assert amp.teacher_autocast_dtype("auto", cpu, None) is None
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: True)
    assert amp.teacher_autocast_dtype("auto", cpu, None) is torch.bfloat16
    with pytest.raises(ConfigError, match="distill.teacher_amp must be"):
        amp.teacher_autocast_dtype("half", cpu, None)


def test_a_bf16_teacher_feeds_float32_losses(teacher_path, tmp_path):
    trainer = Trainer(distill_config(teacher_path, METHODS["dsd"], teacher_amp="bf16"), tmp_path)
    assert trainer.distiller.teacher_dtype is torch.bfloat16
    images = torch.rand(2, 3, 64, 96)
    trainer.model(images)
    trainer.distiller.teach(images)
    total, parts = trainer.distiller.losses(torch.zeros(2, 64, 96, dtype=torch.long))
    assert total.dtype == torch.float32 and torch.isfinite(total) and total > 0


def test_loss_balance_is_printed_logged_and_warned(teacher_path, tmp_path, capsys):
    """Every distillation run measures each weighted term against the CE: a table at the start, columns in
    metrics.csv at the first step and every train.balance_every steps, and a warning for a term out of range."""
    losses = [{"name": "ace", "weight": 1.0, "student": ["output"], "teacher": ["output"]},
              {"name": "cwd", "weight": 1.0e5, "student": ["logits"], "teacher": ["logits"]}]
    config = distill_config(teacher_path, losses, task_weight=0.0)  # ACE in place of the CE: no warning for it
    config["train"].update(iterations=4, balance_every=2, log_every=4, val_every=4)
    Trainer(config, tmp_path).fit()
    out = capsys.readouterr().out
    assert "term 'task'" not in out
    assert "loss balance at iteration 1" in out and "cwd" in out.split("loss balance")[1]
    assert "warning: loss balance: term 'cwd' value is" in out and "more than 20x" in out
    assert "term 'ace'" not in out
    import csv

    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    measured = [row for row in rows if row.get("bal_ace")]
    assert [int(row["iteration"]) for row in measured] == [1, 2, 4]
    for row in measured:
        assert float(row["bal_task"]) == 0.0 and float(row["gradbal_task"]) == 0.0
        assert 1e-3 < float(row["bal_ace"]) < 20 and float(row["bal_cwd"]) > 20
        assert float(row["gradbal_cwd"]) > float(row["gradbal_ace"]) > 0


def test_balance_measurement_leaves_training_unchanged(teacher_path, tmp_path):
    """The extra gradient passes only read: a run with a measurement every step ends with the same weights."""
    losses = METHODS["kd"]
    states = []
    for every, name in ((1, "often"), (1000, "once")):
        config = distill_config(teacher_path, losses)
        config["train"].update(iterations=3, balance_every=every, val_every=3)
        trainer = Trainer(config, tmp_path / name)
        trainer.fit()
        states.append(trainer.model.state_dict())
    for key in states[0]:
        assert torch.allclose(states[0][key].float(), states[1][key].float()), key
