"""Distillation losses: the trainer's contract, the maths at equality, the node budget and the KA autoencoder.

One file over 450 lines on purpose: the registry contract runs over every loss, and each loss's own checks sit beside
it so that a new loss shows in one place what it must satisfy.
"""

from __future__ import annotations

import logging

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from edgeseg.training.distill.autoencoder import (  # noqa: E402
    FeatureAutoencoder, autoencoder_loss, train_autoencoder)
from edgeseg.training.distill.losses import DistillLoss, build_loss, functional, list_losses  # noqa: E402
from edgeseg.training.distill.losses.pairwise import _channel_correlation_mse  # noqa: E402

LATENT = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")

# name -> (params, student channels, teacher channels, student sizes, teacher sizes): widths and resolutions differ
# between the networks wherever the loss allows it.
CASES = {
    "kd": ({"temperature": 2.0}, [5], [5], [(8, 8)], [(16, 16)]),
    "cwd": ({}, [6], [10], [(8, 8)], [(16, 16)]),
    "ace": ({}, [5], [5], [(8, 8)], [(16, 16)]),
    "skd_pairwise": ({}, [6], [10], [(8, 8)], [(16, 16)]),
    "csc": ({}, [6], [10], [(8, 8)], [(16, 16)]),
    "psd": ({}, [4, 6, 8], [8, 12, 16], [(16, 16), (8, 8), (8, 8)], [(32, 32), (16, 16), (16, 16)]),
    "csd": ({"temperature": 1.0}, [5], [5], [(8, 8)], [(16, 16)]),
    "dsd": ({}, [4, 6, 5], [8, 12, 5], [(16, 16), (8, 8), (8, 8)], [(32, 32), (16, 16), (16, 16)]),
    "ka": ({"latent_channels": LATENT}, [6], [10], [(8, 8)], [(16, 16)]),
    "affinity": ({"latent_channels": LATENT}, [6], [10], [(8, 8)], [(16, 16)]),
}
LATENT_LOSSES = ("ka", "affinity")


def _build(name: str, **overrides) -> DistillLoss:
    params, student_channels, teacher_channels, _, _ = CASES[name]
    loss = build_loss(name, student_channels=student_channels, teacher_channels=teacher_channels,
                      **{**params, **overrides})
    if name in LATENT_LOSSES:
        # A strided encoder, so that the latent map is smaller than the teacher feature as well.
        loss.set_encoder(FeatureAutoencoder(teacher_channels[0], LATENT, stride=2).encoder)
    return loss


def _random_taps(name: str, requires_grad: bool = True):
    _, student_channels, teacher_channels, student_sizes, teacher_sizes = CASES[name]
    student = [torch.randn(2, c, *size, requires_grad=requires_grad)
               for c, size in zip(student_channels, student_sizes)]
    teacher = [torch.randn(2, c, *size, requires_grad=requires_grad)
               for c, size in zip(teacher_channels, teacher_sizes)]
    labels = torch.randint(0, student_channels[-1], (2, 32, 32))
    labels[:, :3] = 255
    return student, teacher, labels


def _make_identity(adapter: nn.Sequential) -> None:
    """Turn a conv + BN + ReLU adapter into "take the first out_channels channels" (eval mode, BN a no-op)."""
    conv, norm = adapter[0], adapter[1]
    with torch.no_grad():
        conv.weight.zero_()
        centre = conv.kernel_size[0] // 2
        for channel in range(conv.out_channels):
            conv.weight[channel, channel, centre, centre] = 1.0
        norm.running_mean.zero_()
        norm.running_var.fill_(1.0 - norm.eps)
        norm.weight.fill_(1.0)
        norm.bias.zero_()


def test_every_registered_loss_is_exercised():
    assert set(list_losses()) == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_finite_value_and_gradients_reach_student_and_adapters_only(name):
    torch.manual_seed(0)
    loss = _build(name)
    student, teacher, labels = _random_taps(name)
    value = loss(student, teacher, labels)
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    for tap in student:
        assert tap.grad is not None and torch.isfinite(tap.grad).all() and tap.grad.abs().sum() > 0
    for tap in teacher:
        assert tap.grad is None
    for param_name, param in loss.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), param_name


@pytest.mark.parametrize("name", sorted(CASES))
def test_class_attributes_declare_taps_and_labels(name):
    cls = type(_build(name))
    taps = len(CASES[name][1])
    assert cls.num_taps is None and taps >= cls.min_taps or cls.num_taps == taps
    assert cls.needs_labels == (name == "ace")


def _equal_taps(name: str):
    """Student taps that the loss must see as identical to the teacher's, and the loss configured for it."""
    torch.manual_seed(1)
    if name in ("kd", "csd", "ace"):
        loss = build_loss(name, student_channels=[5], teacher_channels=[5], **CASES[name][0])
        teacher = [torch.randn(2, 5, 12, 12)]
        return loss, [t.clone() for t in teacher], teacher
    if name == "cwd":  # features of different widths: an identity adapter selects the teacher's channels
        loss = build_loss("cwd", student_channels=[9], teacher_channels=[6])
        _make_identity(loss.adapter)
        teacher = [torch.rand(2, 6, 12, 12)]
        return loss, [torch.cat([teacher[0], torch.randn(2, 3, 12, 12)], 1)], teacher
    if name == "csc":
        loss = build_loss("csc", student_channels=[9], teacher_channels=[6], max_nodes=64)
        _make_identity(loss.adapter)
        teacher = [torch.rand(2, 6, 12, 12)]
        return loss, [torch.cat([teacher[0], torch.randn(2, 3, 12, 12)], 1)], teacher
    if name == "skd_pairwise":  # cosine affinity ignores extra all-zero channels: no adapter needed
        loss = build_loss("skd_pairwise", student_channels=[9], teacher_channels=[6])
        teacher = [torch.randn(2, 6, 12, 12)]
        return loss, [torch.cat([teacher[0], torch.zeros(2, 3, 12, 12)], 1)], teacher
    if name in ("psd", "dsd"):  # attention maps are normalised, so a scaled copy is the same to PSD
        channels = [4, 8, 5]
        loss = build_loss(name, student_channels=channels, teacher_channels=channels)
        teacher = [torch.randn(2, c, 12, 12) for c in channels]
        scale = 1.0 if name == "dsd" else 3.0
        return loss, [scale * t for t in teacher], teacher
    # ka / affinity: identity encoder and identity adapters put the student exactly onto the teacher's code.
    loss = build_loss(name, student_channels=[9], teacher_channels=[6], latent_channels=6)
    loss.set_encoder(nn.Identity())
    for adapter in (getattr(loss, "feature_adapter", None), loss.affinity_adapter):
        if adapter is not None:
            _make_identity(adapter)
    teacher = [torch.rand(2, 6, 12, 12)]
    return loss, [torch.cat([teacher[0], torch.randn(2, 3, 12, 12)], 1)], teacher


@pytest.mark.parametrize("name", sorted(set(CASES) - {"ace"}))
def test_zero_when_student_matches_teacher_and_positive_when_perturbed(name):
    loss, student, teacher = _equal_taps(name)
    loss.eval()
    labels = torch.zeros(2, 12, 12, dtype=torch.long)
    at_equality = loss(student, teacher, labels).item()
    perturbed = loss([s + 0.5 * torch.randn_like(s) for s in student], teacher, labels).item()
    assert perturbed > 0
    assert abs(at_equality) <= 1e-4 * perturbed


def test_kd_is_temperature_scaled_mean_kl_over_pixels():
    torch.manual_seed(2)
    student, teacher = torch.randn(2, 5, 6, 7), torch.randn(2, 5, 6, 7)
    tau = 3.0
    loss = build_loss("kd", student_channels=[5], teacher_channels=[5], temperature=tau)
    p_teacher = torch.softmax(teacher / tau, 1)
    kl = (p_teacher * (p_teacher.log() - torch.log_softmax(student / tau, 1))).sum(1)
    assert loss([student], [teacher]).item() == pytest.approx(tau ** 2 * kl.mean().item(), rel=1e-5)


def test_cwd_normalises_each_channel_over_space_and_divides_by_images_times_channels():
    torch.manual_seed(3)
    student, teacher = torch.randn(2, 3, 5, 5), torch.randn(2, 3, 5, 5)
    loss = build_loss("cwd", student_channels=[3], teacher_channels=[3], temperature=1.0)
    total = 0.0
    for n in range(2):
        for c in range(3):
            p = torch.softmax(teacher[n, c].flatten(), 0)
            q = torch.softmax(student[n, c].flatten(), 0)
            total += (p * (p / q).log()).sum().item()
    assert loss([student], [teacher]).item() == pytest.approx(total / 6, rel=1e-5)


class TestAdaptiveCrossEntropy:
    def _setup(self, mode="switch", **params):
        torch.manual_seed(4)
        loss = build_loss("ace", student_channels=[4], teacher_channels=[4], mode=mode, **params)
        return loss, torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)

    def test_teacher_right_everywhere_gives_soft_cross_entropy(self):
        loss, student, teacher = self._setup()
        labels = teacher.argmax(1)
        expected = -(torch.softmax(teacher, 1) * torch.log_softmax(student, 1)).sum(1).mean()
        assert loss([student], [teacher], labels).item() == pytest.approx(expected.item(), rel=1e-5)

    def test_teacher_wrong_everywhere_gives_plain_cross_entropy_and_skips_ignored(self):
        loss, student, teacher = self._setup()
        labels = (teacher.argmax(1) + 1) % 4
        labels[0, :2] = 255
        expected = F.cross_entropy(student, labels, ignore_index=255)
        assert loss([student], [teacher], labels).item() == pytest.approx(expected.item(), rel=1e-5)

    def test_class_weights_match_the_weighted_cross_entropy_where_the_teacher_is_wrong(self):
        weights = [0.2, 1.0, 5.0, 2.0]
        loss, student, teacher = self._setup(class_weights=weights)
        labels = (teacher.argmax(1) + 1) % 4
        labels[1, 3:] = 255
        expected = F.cross_entropy(student, labels, weight=torch.tensor(weights), ignore_index=255)
        assert loss([student], [teacher], labels).item() == pytest.approx(expected.item(), rel=1e-5)

    def test_class_weights_need_one_non_negative_value_per_class(self):
        for weights in ([1.0, 1.0], [1.0, -1.0, 1.0, 1.0]):
            with pytest.raises(ValueError, match="class_weights"):
                build_loss("ace", student_channels=[4], teacher_channels=[4], class_weights=weights)

    def test_mix_is_a_convex_combination_of_both_targets(self):
        loss, student, teacher = self._setup(mode="mix", teacher_weight=0.3)
        labels = torch.randint(0, 4, (2, 6, 6))
        soft = -(torch.softmax(teacher, 1) * torch.log_softmax(student, 1)).sum(1).mean()
        hard = F.cross_entropy(student, labels)
        assert loss([student], [teacher], labels).item() == pytest.approx((0.3 * soft + 0.7 * hard).item(), rel=1e-5)

    def test_minimal_at_the_teacher_where_the_teacher_is_right(self):
        loss, _, teacher = self._setup()
        labels = teacher.argmax(1)
        p_teacher = torch.softmax(teacher, 1)
        entropy = -(p_teacher * p_teacher.log()).sum(1).mean().item()
        at_teacher = loss([teacher.clone()], [teacher], labels).item()
        assert at_teacher == pytest.approx(entropy, rel=1e-5)
        for _ in range(3):
            assert loss([teacher + 0.3 * torch.randn_like(teacher)], [teacher], labels).item() > at_teacher

    def test_labels_at_input_resolution_are_downsampled_with_nearest(self):
        loss, student, teacher = self._setup()
        coarse = torch.randint(0, 4, (2, 6, 6))
        coarse[1, 3:] = 255
        fine = coarse.repeat_interleave(4, 1).repeat_interleave(4, 2)
        assert loss([student], [teacher], fine).item() == pytest.approx(
            loss([student], [teacher], coarse).item(), rel=1e-6)

    def test_all_ignored_gives_zero_with_a_graph(self):
        loss, student, teacher = self._setup()
        student.requires_grad_(True)
        value = loss([student], [teacher], torch.full((2, 6, 6), 255))
        value.backward()
        assert value.item() == 0.0 and student.grad is not None


def test_node_grid_respects_the_budget_and_keeps_small_maps():
    assert functional.node_grid(20, 30, 600) == (20, 30)
    for height, width, budget in [(64, 128, 4096), (97, 31, 100), (1, 5000, 64), (5000, 1, 64), (33, 33, 1)]:
        grid = functional.node_grid(height, width, budget)
        assert grid[0] * grid[1] <= budget
        assert grid[0] <= height and grid[1] <= width
        assert grid[0] * grid[1] >= min(budget, height * width) // 2
    with pytest.raises(ValueError):
        functional.node_grid(4, 4, 0)


@pytest.mark.parametrize("name", ["skd_pairwise", "affinity", "ka", "csc"])
def test_max_nodes_bounds_every_affinity_matrix(name, monkeypatch):
    sides = []
    real = functional.cosine_affinity

    def spy(maps):
        result = real(maps)
        sides.append(result.shape[-1])
        return result

    monkeypatch.setattr(functional, "cosine_affinity", spy)
    extra = {"pool_kernel": 1} if name == "skd_pairwise" else {}
    params = {"latent_channels": LATENT} if name in LATENT_LOSSES else {}
    for budget, expected_max in [(50, 50), (10_000, 32 * 32)]:
        sides.clear()
        loss = build_loss(name, student_channels=[6], teacher_channels=[10], max_nodes=budget, **params, **extra)
        if name in LATENT_LOSSES:
            loss.set_encoder(FeatureAutoencoder(10, LATENT).encoder)
        loss([torch.randn(2, 6, 16, 16, requires_grad=True)], [torch.randn(2, 10, 32, 32)]).backward()
        assert sides and max(sides) <= expected_max
        assert loss.last_node_count == max(sides)
        if budget > 32 * 32:
            assert loss.last_node_count == 32 * 32  # within budget: no pooling at all


class TestBuildLoss:
    def test_unknown_name_lists_the_valid_ones(self):
        with pytest.raises(ValueError, match="unknown distillation loss 'kld'.*kd.*skd_pairwise"):
            build_loss("kld", student_channels=[5], teacher_channels=[5])

    def test_unknown_parameter_lists_the_valid_ones(self):
        with pytest.raises(ValueError, match="tau.*temperature"):
            build_loss("kd", student_channels=[5], teacher_channels=[5], tau=2.0)

    @pytest.mark.parametrize("name, params", [
        ("kd", {"temperature": "high"}),
        ("kd", {"temperature": True}),
        ("skd_pairwise", {"max_nodes": 2.5}),
        ("skd_pairwise", {"max_nodes": True}),
        ("ace", {"mode": "soft"}),
        ("dsd", {"psd_includes_last": "yes"}),
        ("ka", {"latent_channels": None}),
    ])
    def test_ill_typed_parameters_are_rejected(self, name, params):
        _, student_channels, teacher_channels, _, _ = CASES[name]
        with pytest.raises(ValueError, match="must be"):
            build_loss(name, student_channels=student_channels, teacher_channels=teacher_channels, **params)

    def test_ints_are_accepted_for_float_parameters(self):
        loss = build_loss("kd", student_channels=[5], teacher_channels=[5], temperature=2)
        assert isinstance(loss.temperature, float) and loss.temperature == 2.0

    def test_missing_required_parameter(self):
        with pytest.raises(ValueError, match="needs parameter.*latent_channels"):
            build_loss("ka", student_channels=[6], teacher_channels=[10])

    @pytest.mark.parametrize("name, student_channels, teacher_channels", [
        ("kd", [5, 5], [5, 5]),
        ("kd", [5], [6]),
        ("psd", [4], [8]),
        ("psd", [4, 6], [8]),
        ("dsd", [4, 5], [8, 5]),
        ("dsd", [4, 6, 5], [8, 12, 7]),
        ("cwd", [0], [4]),
    ])
    def test_tap_and_channel_lists_that_do_not_fit(self, name, student_channels, teacher_channels):
        with pytest.raises(ValueError):
            build_loss(name, student_channels=student_channels, teacher_channels=teacher_channels)

    def test_dsd_with_two_taps_when_psd_includes_the_logits(self):
        loss = build_loss("dsd", student_channels=[4, 5], teacher_channels=[8, 5], psd_includes_last=True)
        value = loss([torch.randn(2, 4, 8, 8), torch.randn(2, 5, 8, 8)], [torch.randn(2, 8, 8, 8),
                                                                          torch.randn(2, 5, 8, 8)])
        assert torch.isfinite(value)


def test_forward_rejects_taps_that_do_not_match_the_construction():
    loss = build_loss("cwd", student_channels=[6], teacher_channels=[10])
    with pytest.raises(ValueError, match="channels"):
        loss([torch.randn(2, 7, 8, 8)], [torch.randn(2, 10, 8, 8)])
    with pytest.raises(ValueError, match="tap pair"):
        loss([torch.randn(2, 6, 8, 8)] * 2, [torch.randn(2, 10, 8, 8)] * 2)
    ace = build_loss("ace", student_channels=[4], teacher_channels=[4])
    with pytest.raises(ValueError, match="labels"):
        ace([torch.randn(2, 4, 8, 8)], [torch.randn(2, 4, 8, 8)])


@pytest.mark.parametrize("name", LATENT_LOSSES)
def test_encoder_is_frozen_and_outside_parameters_and_state_dict(name):
    _, student_channels, teacher_channels, _, _ = CASES[name]
    loss = build_loss(name, student_channels=student_channels, teacher_channels=teacher_channels,
                      latent_channels=LATENT)
    student, teacher, _ = _random_taps(name)
    with pytest.raises(RuntimeError, match="set_encoder"):
        loss(student, teacher)
    encoder = FeatureAutoencoder(teacher_channels[0], LATENT).encoder
    loss.set_encoder(encoder)
    loss.train()
    loss(student, teacher).backward()
    assert not encoder.training
    assert all(not p.requires_grad and p.grad is None for p in encoder.parameters())
    encoder_ids = {id(p) for p in encoder.parameters()}
    assert encoder_ids.isdisjoint(id(p) for p in loss.parameters())
    assert not any(key.startswith(("_encoder", "encoder")) for key in loss.state_dict())
    wrong = build_loss(name, student_channels=student_channels, teacher_channels=teacher_channels,
                       latent_channels=LATENT + 1)
    wrong.set_encoder(encoder)
    with pytest.raises(RuntimeError, match="latent"):
        wrong(student, teacher)


def _structured_features(batches: int, channels: int = 12) -> list[torch.Tensor]:
    """Smooth low-rank feature maps: 3 latent fields mixed into ``channels`` channels, plus a little noise."""
    generator = torch.Generator().manual_seed(5)
    mixing = torch.randn(channels, 3, generator=generator)
    result = []
    for _ in range(batches):
        fields = F.interpolate(torch.randn(4, 3, 4, 4, generator=generator), size=(16, 16), mode="bilinear",
                               align_corners=False)
        noise = 0.05 * torch.randn(4, channels, 16, 16, generator=generator)
        result.append(torch.einsum("ck,nkhw->nchw", mixing, fields) + noise)
    return result


def test_csc_channel_term_with_fewer_positions_than_channels_equals_the_gram_form():
    """The m x m route (3x4 positions, 40 channels) must give the D x D Gram matrices' MSE and its gradient."""
    student = torch.randn(2, 40, 3, 4, requires_grad=True)
    teacher = torch.randn(2, 40, 3, 4)

    def gram(maps):
        rows = F.normalize(maps.flatten(2), dim=2)
        return rows @ rows.transpose(1, 2)

    direct = F.mse_loss(gram(student), gram(teacher))
    fast = _channel_correlation_mse(student, teacher)
    assert torch.allclose(fast, direct, rtol=1e-5)
    assert torch.allclose(torch.autograd.grad(fast, student)[0], torch.autograd.grad(direct, student)[0],
                          rtol=1e-4, atol=1e-7)
    assert float(_channel_correlation_mse(teacher, teacher)) < 1e-7


def test_autoencoder_shapes_with_stride():
    model = FeatureAutoencoder(8, 3, stride=2).eval()
    features = torch.randn(2, 8, 15, 17)
    assert model.encode(features).shape == (2, 3, 8, 9)
    assert model(features).shape == features.shape
    assert FeatureAutoencoder(8, 3).eval().encode(features).shape == (2, 3, 15, 17)


def test_autoencoder_loss_without_sparsity_is_the_reconstruction_mse():
    torch.manual_seed(6)
    model = FeatureAutoencoder(8, 3).eval()
    features = torch.randn(2, 8, 6, 6)
    assert autoencoder_loss(model, features, alpha=0.0).item() == pytest.approx(
        F.mse_loss(model(features), features).item(), rel=1e-5)
    assert autoencoder_loss(model, features, alpha=1.0).item() > autoencoder_loss(model, features, alpha=0.0).item()


def test_autoencoder_trains_and_comes_back_frozen():
    batches = _structured_features(4)
    torch.manual_seed(7)
    untrained = FeatureAutoencoder(12, 6).eval()
    torch.manual_seed(7)  # the same initial weights as `untrained`
    trained = train_autoencoder(batches, channels=12, latent_channels=6, iterations=48, lr=0.05, device="cpu",
                                progress=False)
    with torch.no_grad():
        before = sum(autoencoder_loss(untrained, b).item() for b in batches)
        after = sum(autoencoder_loss(trained, b).item() for b in batches)
    assert after < 0.5 * before
    assert not trained.training
    assert all(not p.requires_grad for p in trained.parameters())


def test_autoencoder_stops_when_a_one_shot_iterator_runs_out(caplog):
    batches = iter(_structured_features(2))
    with caplog.at_level(logging.WARNING):
        model = train_autoencoder(batches, channels=12, latent_channels=6, iterations=5, lr=0.01, device="cpu",
                                  progress=False)
    assert "ran out after 2 of 5" in caplog.text
    assert not model.training


def test_autoencoder_rejects_features_of_the_wrong_width():
    with pytest.raises(ValueError, match="12"):
        train_autoencoder([torch.randn(2, 5, 8, 8)], channels=12, latent_channels=6, iterations=1, lr=0.01,
                          device="cpu", progress=False)


# ------------------------------------------------------------------------------------------------ scale pins
# Inputs of known statistics: student logits ~ N(0, 1) over 11 classes (cross entropy ~ 2.9 against random labels),
# teacher logits ~ N(0, 4^2) (a confident, trained teacher) and unit-variance features. Each loss at the warm-start
# protocol's weight must stay within [1/1000, 20] x that CE, the range the trainer's loss-balance check accepts; the
# review found KA at ~190x and CSD at ~1e-4x.

def _scale_inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits_s = torch.randn(4, 11, 16, 20, generator=generator, requires_grad=True)
    logits_t = 4.0 * torch.randn(4, 11, 16, 20, generator=generator)
    labels = torch.randint(0, 11, (4, 16, 20), generator=generator)
    ce = torch.nn.functional.cross_entropy(logits_s, labels)
    return logits_s, logits_t, labels, ce


def test_csd_paper_reading_is_the_default_and_trains():
    logits_s, logits_t, labels, ce = _scale_inputs()
    paper = build_loss("csd", student_channels=[11], teacher_channels=[11])
    assert paper.softmax_axis == "class"
    value = 10.0 * paper([logits_s], [logits_t])
    assert 1e-3 < float(value.detach() / ce.detach()) < 20
    grad = torch.autograd.grad(value, logits_s)[0].norm()
    ce_grad = torch.autograd.grad(ce, logits_s)[0].norm()
    assert float(grad / ce_grad) > 1e-3  # not negligible
    spatial = build_loss("csd", student_channels=[11], teacher_channels=[11], softmax_axis="spatial")
    inert = 10.0 * spatial([logits_s], [logits_t])
    assert float(inert.detach() / ce.detach()) < 1e-3  # the CIRKD reading is numerically inert at this map size


def test_ka_element_reduction_keeps_the_papers_beta_in_balance():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(4, 64, 8, 10, generator=generator)
    teacher = torch.randn(4, 32, 16, 20, generator=generator)
    _, _, _, ce = _scale_inputs()
    encoder = torch.nn.Sequential(torch.nn.Conv2d(32, 128, 3, stride=2, padding=1), torch.nn.ReLU())
    values = {}
    for reduction in ("element", "position"):
        torch.manual_seed(0)
        loss = build_loss("ka", student_channels=[64], teacher_channels=[32], latent_channels=128,
                          adapt_reduction=reduction, affinity_weight=0.0)
        loss.set_encoder(encoder)
        values[reduction] = float(loss([student], [teacher]).detach() / ce.detach())
    assert 1e-3 < values["element"] < 20
    assert values["position"] > 50 * values["element"] / 2  # the literal per-position L1 is ~128x larger


@pytest.mark.parametrize("name, weight, taps", [
    ("kd", 1.0, "logits"), ("cwd", 3.0, "logits"), ("csd", 10.0, "logits"), ("ace", 1.0, "logits"),
    ("csc", 10.0, "feature"), ("skd_pairwise", 10.0, "feature"), ("psd", 39.1, "stages"),
    ("dsd", 1.0, "stages+logits"),
])
def test_loss_values_stay_within_the_balance_range(name, weight, taps):
    logits_s, logits_t, labels, ce = _scale_inputs()
    generator = torch.Generator().manual_seed(1)
    if taps == "logits":
        student, teacher, channels = [logits_s], [logits_t], ([11], [11])
    elif taps == "feature":
        student = [torch.randn(4, 64, 8, 10, generator=generator)]
        teacher = [torch.randn(4, 128, 16, 20, generator=generator)]
        channels = ([64], [128])
    else:
        student = [torch.randn(4, 32, 16, 20, generator=generator), torch.randn(4, 64, 8, 10, generator=generator)]
        teacher = [torch.randn(4, 32, 16, 20, generator=generator), torch.randn(4, 64, 16, 20, generator=generator)]
        channels = ([32, 64], [32, 64])
        if taps == "stages+logits":
            student, teacher = student + [logits_s], teacher + [logits_t]
            channels = (channels[0] + [11], channels[1] + [11])
    params = {"psd_weight": 39.1, "psd_includes_last": True} if name == "dsd" else {}
    if name == "ace":
        params = {"ignore_index": 255}
    loss = build_loss(name, student_channels=channels[0], teacher_channels=channels[1], **params)
    value = weight * loss(student, teacher, labels)
    assert 1e-3 < float(value.detach() / ce.detach()) < 20, float(value.detach() / ce.detach())
