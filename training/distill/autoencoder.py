"""Stage 1 of Knowledge Adaptation (He et al., CVPR 2019; docs/methods.md): a teacher-feature autoencoder.

The autoencoder compresses the teacher's last feature map into a compact latent code; its frozen encoder then
defines the space in which the ``ka`` and ``affinity`` losses compare student and teacher. The decoder only exists
to train the encoder (reconstruction) and is discarded afterwards; neither part reaches the exported student.
"""

from __future__ import annotations

import logging
from typing import Iterable, Iterator

import torch
from torch import nn
from tqdm import tqdm

LOGGER = logging.getLogger(__name__)


class FeatureAutoencoder(nn.Module):
    """Three-conv encoder, symmetric transposed-conv decoder.

    Encoder: ``channels -> hidden -> hidden -> latent_channels``, each a 3x3 conv + BN + ReLU; the first conv has
    stride ``stride``, so the latent map is ``ceil(h / stride) x ceil(w / stride)`` (the input size with the default
    stride 1). The final ReLU makes codes non-negative, the same range as the ReLU adapters that map student features
    into this space. Decoder: the mirror image with 3x3 transposed convs, the last one (stride ``stride``) linear so
    that it can reproduce signed teacher features; it is told the input size, so odd sizes round-trip exactly.

    Args:
        channels: width of the teacher feature to encode.
        latent_channels: width of the code.
        hidden_channels: width of the two inner layers; defaults to the mean of ``channels`` and ``latent_channels``.
        stride: spatial stride of the code (1 or 2 are the useful values).
    """

    def __init__(self, channels: int, latent_channels: int, hidden_channels: int | None = None,
                 stride: int = 1) -> None:
        super().__init__()
        if min(channels, latent_channels) < 1 or stride < 1:
            raise ValueError(f"channels, latent_channels and stride must be positive, got {channels}, "
                             f"{latent_channels}, {stride}")
        hidden = hidden_channels or (channels + latent_channels) // 2
        self.channels = channels
        self.latent_channels = latent_channels
        self.stride = stride
        self.encoder = nn.Sequential(
            _conv_bn_relu(nn.Conv2d(channels, hidden, 3, stride=stride, padding=1, bias=False)),
            _conv_bn_relu(nn.Conv2d(hidden, hidden, 3, padding=1, bias=False)),
            _conv_bn_relu(nn.Conv2d(hidden, latent_channels, 3, padding=1, bias=False)),
        )
        self.decoder_body = nn.Sequential(
            _conv_bn_relu(nn.ConvTranspose2d(latent_channels, hidden, 3, padding=1, bias=False)),
            _conv_bn_relu(nn.ConvTranspose2d(hidden, hidden, 3, padding=1, bias=False)),
        )
        self.decoder_head = nn.ConvTranspose2d(hidden, channels, 3, stride=stride, padding=1)

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        return self.encoder(features)

    def decode(self, code: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
        """Reconstruct a (N, channels, *size) feature map from ``code``."""
        return self.decoder_head(self.decoder_body(code), output_size=tuple(size))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(features), features.shape[-2:])


def _conv_bn_relu(conv: nn.Module) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(conv.out_channels), nn.ReLU(inplace=True))


def autoencoder_loss(model: FeatureAutoencoder, features: torch.Tensor, alpha: float = 1e-7) -> torch.Tensor:
    """KA's stage-1 objective ``||phi - D(E(phi))||^2 + alpha * ||E(phi)||_1``, both terms divided by phi's size.

    Dividing both sums by the same element count gives a mean squared error whose scale does not depend on the
    batch or map size, and keeps the paper's ratio between the two terms, so ``alpha`` keeps its meaning (1e-7,
    docs/methods.md). The L1 term keeps the code sparse so the autoencoder does not learn an identity.
    """
    code = model.encode(features)
    reconstruction = model.decode(code, features.shape[-2:])
    elements = features.numel()
    return ((reconstruction - features).pow(2).sum() + alpha * code.abs().sum()) / elements


@torch.no_grad()
def code_statistics(model: FeatureAutoencoder, features: torch.Tensor) -> dict[str, float]:
    """How well the frozen autoencoder serves as KA's latent space, on one batch of teacher features.

    ``relative_error``: ||phi - D(E(phi))||^2 / ||phi||^2 (1.0 = no better than zeros). ``zero_codes``: the share of
    positions whose whole code vector is 0 after the final ReLU; L2-normalising such a vector gives a zero target, so
    ``ka`` teaches nothing there.
    """
    features = features.float()
    code = model.encode(features)
    reconstruction = model.decode(code, features.shape[-2:])
    error = (reconstruction - features).pow(2).sum() / features.pow(2).sum().clamp_min(1e-12)
    zero = (code.abs().amax(dim=1) == 0).float().mean()
    return {"relative_error": float(error), "zero_codes": float(zero)}


def train_autoencoder(feature_batches: Iterable[torch.Tensor], channels: int, latent_channels: int,
                      iterations: int, lr: float, device: str | torch.device, progress: bool = True, *,
                      alpha: float = 1e-7, weight_decay: float = 1e-4, momentum: float = 0.9,
                      stride: int = 1) -> FeatureAutoencoder:
    """Train a :class:`FeatureAutoencoder` on teacher features and return it frozen (eval mode, no gradients).

    SGD with momentum; the paper trains one epoch with lr 0.1 and weight decay 1e-4, "large" on purpose so that the
    code stays compact. When ``feature_batches`` runs out before ``iterations`` steps it is iterated again if it is a
    re-iterable collection (a list, a DataLoader); a one-shot iterator ends training early with a warning.

    Args:
        feature_batches: (N, channels, h, w) teacher features, computed without gradients.
        channels: teacher feature width.
        latent_channels: code width (the ``latent_channels`` of the ``ka``/``affinity`` losses).
        iterations: optimisation steps.
        lr: SGD learning rate.
        device: where to train.
        progress: show a progress bar.
        alpha: L1 weight on the code.
        weight_decay: SGD weight decay.
        momentum: SGD momentum.
        stride: spatial stride of the code.
    """
    if iterations < 0:
        raise ValueError(f"iterations must be non-negative, got {iterations}")
    device = torch.device(device)
    model = FeatureAutoencoder(channels, latent_channels, stride=stride).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    batches = _repeat(feature_batches)
    bar = tqdm(range(iterations), desc="autoencoder", disable=not progress, leave=False)
    for step in bar:
        features = next(batches, None)
        if features is None:
            LOGGER.warning("autoencoder: feature batches ran out after %d of %d steps", step, iterations)
            break
        features = features.detach().to(device, torch.float32)
        if features.dim() != 4 or features.shape[1] != channels:
            raise ValueError(f"autoencoder expects (N, {channels}, h, w) features, got {tuple(features.shape)}")
        loss = autoencoder_loss(model, features, alpha)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"autoencoder loss became {loss.item()} at step {step}; lower the lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.4g}")
    return model.eval().requires_grad_(False)


def _repeat(batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Yield from ``batches`` over and over; stop after one pass if it is a one-shot iterator or yields nothing."""
    while True:
        iterator = iter(batches)
        one_shot = iterator is batches
        produced = False
        for batch in iterator:
            produced = True
            yield batch
        if one_shot or not produced:
            return
