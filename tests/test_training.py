"""Training loop: a run on the embedded sample, its checkpoint card, kill-and-resume, and eval of the result."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from edgeseg.cli import main
from edgeseg.runtime.errors import ConfigError, ModelFormatError
from edgeseg.training.checkpoint import build_model_from_card, load_checkpoint
from edgeseg.training.config import resolve_config
from edgeseg.training.trainer import EpochSampler, Trainer, is_due, poly_factor

TINY = [
    "model.name=tiny_segnet", "data.crop_size=[64, 96]", "data.base_size=[90, 120]", "data.batch_size=4",
    "data.workers=0", "data.val_limit=3", "train.val_every=6", "train.log_every=2", "train.threads=1",
]


def tiny_config(*extra):
    return resolve_config(None, [*TINY, *extra])


def test_poly_schedule_and_warmup():
    assert poly_factor(0, 100, 0.9, 0) == 1.0
    assert poly_factor(100, 100, 0.9, 0) == 0.0
    assert 0 < poly_factor(50, 100, 0.9, 0) < 1
    assert poly_factor(0, 100, 0.9, 4) == pytest.approx(0.25)


def test_epoch_sampler_resumes_mid_epoch_and_shards():
    full = list(EpochSampler(10, seed=3))
    resumed = EpochSampler(10, seed=3)
    resumed.set_position(0, 4)
    assert list(resumed) == full[4:]
    next_epoch = EpochSampler(10, seed=3)
    next_epoch.set_position(1, 0)
    assert sorted(next_epoch) == list(range(10)) and list(next_epoch) != full
    shards = [list(EpochSampler(10, seed=3, rank=r, world=2)) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(10))


def test_training_writes_run_folder_and_self_describing_checkpoint(tmp_path):
    result = Trainer(tiny_config("train.iterations=6", "train.ckpt_every=3"), tmp_path).fit()
    assert result["iterations"] == 6
    for name in ("config.yaml", "metrics.csv", "metrics.json", "last.pt", "best.pt"):
        assert (tmp_path / name).is_file(), name
    card = load_checkpoint(tmp_path / "last.pt")
    assert card["model"]["name"] == "tiny_segnet"
    assert card["classes"]["names"][0] == "Sky" and len(card["classes"]["names"]) == 11
    assert card["input_size"] == [90, 120]
    assert card["train_state"]["iteration"] == 6
    model = build_model_from_card(card)
    assert model(torch.zeros(1, 3, 64, 96)).shape == (1, 11, 64, 96)
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "iteration" and "ce" in header and "val_miou" in header


def test_resumed_run_matches_uninterrupted_run(tmp_path):
    """A run that crashes after its checkpoint at iteration 4 and resumes ends bit-identical to one that never did."""
    straight = Trainer(tiny_config("train.iterations=8", "train.ckpt_every=4"), tmp_path / "a")
    straight.fit()
    crashing = Trainer(tiny_config("train.iterations=8", "train.ckpt_every=4"), tmp_path / "b")
    real_step = crashing.train_step

    def step_then_crash(*batch):
        if crashing.iteration == 5:
            raise RuntimeError("simulated crash")
        return real_step(*batch)

    crashing.train_step = step_then_crash
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.fit()
    resumed = Trainer(tiny_config("train.iterations=8", "train.ckpt_every=4"), tmp_path / "b",
                      resume_from=tmp_path / "b")
    assert resumed.iteration == 4
    resumed.fit()
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_resume_applies_the_configs_optimizer_settings(tmp_path):
    Trainer(tiny_config("train.iterations=4", "optim.warmup_iters=0"), tmp_path).fit()
    config = tiny_config("train.iterations=8", "optim.warmup_iters=0", "optim.lr=0.5", "optim.weight_decay=0.25")
    resumed = Trainer(config, tmp_path, resume_from=tmp_path)
    group = resumed.optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(0.5 * poly_factor(4, 8, config["optim"]["poly_power"], 0))
    assert group["weight_decay"] == 0.25 and resumed.scheduler.base_lrs == [0.5]


def test_killed_cli_run_resumes_from_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "edgeseg.cli", "train", "--out", str(out)]
    overrides = [f"--set={o}" for o in [*TINY, "train.iterations=400", "train.ckpt_every=2", "train.val_every=1000"]]
    config = tmp_path / "c.yaml"
    config.write_text("name: killed\n")
    proc = subprocess.Popen([*args[:4], str(config), *args[4:], *overrides], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if (out / "last.pt").exists() and load_checkpoint(out / "last.pt")["train_state"]["iteration"] >= 4:
                break
            time.sleep(0.5)
        else:
            pytest.fail("no checkpoint at iteration >= 4 within 120 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    stopped_at = load_checkpoint(out / "last.pt")["train_state"]["iteration"]
    assert 4 <= stopped_at < 400
    target = stopped_at + 4
    code = main(["train", "--resume", str(out), "--set", f"train.iterations={target}"])
    assert code == 0
    state = load_checkpoint(out / "last.pt")["train_state"]
    assert state["iteration"] == target
    logged = [row["iteration"] for row in state["history"] if "step_s" in row]
    assert logged == sorted(logged) and logged[-1] == target


def test_fresh_run_refuses_to_overwrite_and_resume_needs_state(tmp_path):
    Trainer(tiny_config("train.iterations=2"), tmp_path).fit()
    config = tmp_path / "c.yaml"
    config.write_text("name: again\n")
    with pytest.raises(ConfigError, match="--resume"):
        from edgeseg.training.commands import run_train
        import argparse

        run_train(argparse.Namespace(config=str(config), out=tmp_path, overrides=TINY, resume=None))
    with pytest.raises(ConfigError, match="no training state"):
        Trainer(tiny_config(), tmp_path / "x", resume_from=tmp_path / "best.pt")


def test_corrupt_and_foreign_checkpoints_are_clear_errors(tmp_path):
    corrupt = tmp_path / "bad.pt"
    corrupt.write_bytes(b"not a zip file at all")
    with pytest.raises(ModelFormatError, match="bad.pt"):
        load_checkpoint(corrupt)
    bare = tmp_path / "bare.pt"
    torch.save({"weight": torch.zeros(1)}, bare)
    with pytest.raises(ModelFormatError, match="not an edgeseg checkpoint"):
        load_checkpoint(bare)
    with pytest.raises(ModelFormatError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_eval_cli_scores_a_trained_checkpoint(tmp_path, capsys):
    Trainer(tiny_config("train.iterations=2"), tmp_path).fit()
    capsys.readouterr()
    code = main(["eval", str(tmp_path / "last.pt"), "--data", "camvid", "--split", "val", "--limit", "3", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["images"] == 3
    assert 0.0 <= result["miou"] <= 1.0 and 0.0 <= result["pixel_acc"] <= 1.0
    assert set(result["per_class_iou"]) == set(load_checkpoint(tmp_path / "last.pt")["classes"]["names"])


def test_eval_of_checkpoint_equals_trainer_validation(tmp_path, capsys):
    """The CLI (through the runtime Segmenter) and the trainer's own validation score a checkpoint identically."""
    trainer = Trainer(tiny_config("train.iterations=2"), tmp_path)
    trainer.fit()
    expected = trainer.validate(limit=5)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "last.pt"), "--data", "camvid", "--limit", "5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["miou"] == pytest.approx(expected["miou"], abs=1e-6)


def test_checkpoint_backend_refuses_devices_it_cannot_run_naming_the_checkpoint():
    from edgeseg.runtime.errors import BackendUnavailable
    from edgeseg.training.inference import TorchBackend

    with pytest.raises(BackendUnavailable, match=r"^student\.pt: the torch backend runs on cpu or cuda"):
        TorchBackend("student.pt", device="tensorrt")
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match=r"^student\.pt: device 'cuda:1' asked for"):
            TorchBackend("student.pt", device="cuda:1")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (AMP and channels_last training path)")
def test_cuda_training_with_amp_writes_a_checkpoint_that_runs_on_the_cpu(tmp_path):
    result = Trainer(tiny_config("train.iterations=4", "train.device=cuda", "train.amp=auto"), tmp_path).fit()
    assert result["iterations"] == 4 and result["final"]["miou"] == result["final"]["miou"]  # trained, not NaN
    card = load_checkpoint(tmp_path / "last.pt")
    model = build_model_from_card(card).eval()
    assert all(t.device.type == "cpu" for t in model.state_dict().values())
    assert torch.isfinite(model(torch.zeros(1, 3, 64, 96))).all()


def test_periodic_actions_run_every_n_iterations_and_always_at_the_end():
    assert [i for i in range(1, 11) if is_due(i, 4, 10)] == [4, 8, 10]
    assert [i for i in range(1, 11) if is_due(i, 0, 10)] == [10]  # 0: only after the last iteration


def _processes_with_marker(marker: str) -> list[int]:
    """PIDs of live processes whose environment carries ``marker`` (children inherit it, wherever reparented)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc to find the processes")
def test_sigkilled_training_leaves_no_process_behind(tmp_path):
    """Three SIGKILLs of the training process alone (not its group), each followed by --resume: afterwards no
    loader worker, fork server or resource tracker of those runs is alive, and no temporary checkpoint is left."""
    out = tmp_path / "run"
    config = tmp_path / "c.yaml"
    config.write_text("name: killed\n")
    overrides = [f"--set={o}" for o in [*TINY, "data.workers=1", "train.iterations=100000", "train.ckpt_every=2",
                                        "train.val_every=100000"]]
    marker = f"EDGESEG_KILL_TEST={os.getpid()}_{time.time_ns()}"
    env = {**os.environ, marker.split("=")[0]: marker.split("=")[1]}
    (out / ".last.abc.tmp.pt").parent.mkdir(parents=True)
    for attempt in range(3):
        command = [sys.executable, "-m", "edgeseg.cli", "train"]
        command += ["--resume", str(out)] if (out / "last.pt").exists() else [str(config), "--out", str(out)]
        if attempt == 1:  # what a kill during a save leaves: a stale temporary beside last.pt
            (out / ".last.abc.tmp.pt").write_bytes(b"partial")
        proc = subprocess.Popen([*command, *overrides], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=env)
        deadline = time.time() + 120
        start = load_checkpoint(out / "last.pt")["train_state"]["iteration"] if (out / "last.pt").exists() else 0
        while time.time() < deadline:
            if (out / "last.pt").exists():
                try:
                    if load_checkpoint(out / "last.pt")["train_state"]["iteration"] >= start + 2:
                        break
                except Exception:  # being replaced right now
                    pass
            time.sleep(0.3)
        else:
            os.kill(proc.pid, signal.SIGKILL)
            pytest.fail("the run made no progress within 120 s")
        assert len(_processes_with_marker(marker)) >= 2  # the trainer and at least its loader worker
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 30
    while _processes_with_marker(marker) and time.time() < deadline:
        time.sleep(0.5)
    left = _processes_with_marker(marker)
    for pid in left:  # do not leak them into the rest of the suite
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes of the killed runs still alive: {left}"
    # The planted stale temporary was removed by the next start; one left by the last kill waits for the next.
    assert not (out / ".last.abc.tmp.pt").exists()


def test_configs_that_would_train_nothing_or_everything_are_refused(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty.yaml is empty"):
        resolve_config(empty)
    for override, key in (("train.iterations=-5", "train.iterations"), ("train.iterations=0", "train.iterations"),
                          ("data.batch_size=0", "data.batch_size"), ("train.val_every=-1", "train.val_every")):
        with pytest.raises(ConfigError, match=f"{key} must be at least"):
            resolve_config(None, [override])
    assert main(["train", str(empty), "--out", str(tmp_path / "run")]) != 0
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_checkpoint_with_a_zero_std_is_refused(tmp_path):
    from edgeseg.training.checkpoint import model_card, save_checkpoint
    from edgeseg.training.models import create_model
    from edgeseg.runtime.classes import CAMVID

    model = create_model("tiny_segnet", num_classes=CAMVID.num_classes)
    card = model_card(model_name="tiny_segnet", model_kwargs={}, classes=CAMVID, mean=[0.5, 0.5, 0.5],
                      std=[0.2, 0.0, 0.2], input_size=[90, 120], config={})
    path = save_checkpoint(tmp_path / "zero_std.pt", card, model.state_dict())
    with pytest.raises(ModelFormatError, match="zero_std.pt: normalization needs .* positive std"):
        load_checkpoint(path)


def test_unreadable_checkpoint_error_never_advises_weights_only_false(tmp_path):
    random_bytes = tmp_path / "random.pt"
    random_bytes.write_bytes(bytes(range(256)) * 20)

    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    code_carrying = tmp_path / "code.pt"
    torch.save(Payload(), code_carrying)
    for path in (random_bytes, code_carrying):
        with pytest.raises(ModelFormatError) as caught:
            load_checkpoint(path)
        message = str(caught.value)
        assert path.name in message and "weights_only" not in message and "\n" not in message
    assert "GLOBAL posix.system" in str(pytest.raises(ModelFormatError, load_checkpoint, code_carrying).value)
