"""A small multi-scale Glow-style normalizing flow (Dinh et al. 2017, RealNVP; Kingma & Dhariwal
2018, Glow) for 28x28 digits.

The pixel levels v in {0 .. 255} are dequantized to v + u, scaled to (0, 1) by / 256, squeezed
into (alpha, 1 - alpha) and sent through a logit; that is the flow's input ``s``. Each level
squeezes 2x2 pixels into channels and runs ``steps_per_level`` steps of actnorm (data-initialised,
no batch statistics at inference), an LU-parametrised invertible 1x1 convolution and an affine
coupling on a channel split. Between levels half the channels are factored out through a learnt
conditional Gaussian (Glow's split prior, written as one more affine coupling, so that the flow's
output ``z`` is standard normal throughout); the last level ends with a learnt top prior (an
actnorm, per channel or per position). 28 -> 14 -> 7: two levels, 784 latent dimensions; the
levels may run different numbers of steps.

The top latent's density may be a Gaussian mixture instead of the standard normal
(``top_mixture``): one component per class with a shared full covariance, the maximum-likelihood
fit to the encoded training digits given their labels (``GaussianMixturePrior.fit``; Glow's
class-conditional prior, fitted after training). Unfitted it is the standard normal. Sampling
then needs one more choice per image, the component, which the sampler reads from two more
latent coordinates (``component_of``).

Two servable views: ``FlowSampler`` (z -> image, the inverse) and ``FlowLikelihood`` (image ->
bits per dimension of the discrete image, the forward pass at the bin centres)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

LEVELS = 256  # pixel values of a uint8 image


@dataclass
class FlowConfig:
    image_channels: int = 1
    image_size: int = 28  # divisible by 2 ** levels
    levels: int = 2  # squeezes: 28 -> 14 -> 7
    steps_per_level: int | tuple[int, ...] = 8  # actnorm, 1x1 conv, coupling; one count, or one per level
    hidden: int = 128  # channels of the coupling networks (64: 1.67 held-out bits/dim, 0.37 confident)
    logit_alpha: float = 0.05  # RealNVP's boundary: the logit sees (alpha, 1 - alpha), never 0 or 1
    top_prior: str = "channel"  # the top prior's mean and scale: per "channel" (Glow) or per "position"
    # > 0: the top latent's density is a mixture of this many Gaussians (one per class) with a shared
    # covariance, fitted after training; 0: the standard normal
    top_mixture: int = 0

    def steps_at(self, level: int) -> int:
        steps = self.steps_per_level
        return steps if isinstance(steps, int) else steps[level]


# --- The preprocessing: levels <-> the flow's input, with its log-determinant.


def levels_to_logit(
    levels: torch.Tensor, offset: torch.Tensor | float, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel levels (B, C, H, W) in [0, 255] plus the dequantization ``offset`` in [0, 1) (0.5: the
    bin centre) -> s = logit(alpha + (1 - 2 alpha) (v + offset) / 256), and log |ds/dv| summed per
    image (B,). The density of s times exp(that) is the density of v + offset."""
    p = alpha + (1.0 - 2.0 * alpha) * (levels + offset) / LEVELS
    s = torch.log(p) - torch.log1p(-p)
    logdet = math.log(1.0 - 2.0 * alpha) - math.log(LEVELS) - torch.log(p) - torch.log1p(-p)
    return s, logdet.flatten(1).sum(1)


def logit_to_levels(s: torch.Tensor, alpha: float) -> torch.Tensor:
    """The inverse of ``levels_to_logit``: the flow's input -> continuous levels v + u in [0, 256)."""
    return (torch.sigmoid(s) - alpha) / (1.0 - 2.0 * alpha) * LEVELS


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 4C, H/2, W/2): each 2x2 block becomes four channels."""
    _, c, h, w = x.shape
    x = x.reshape(-1, c, h // 2, 2, w // 2, 2)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(-1, 4 * c, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    """(B, 4C, H, W) -> (B, C, 2H, 2W), the inverse of ``squeeze``."""
    _, c4, h, w = x.shape
    c = c4 // 4
    x = x.reshape(-1, c, 2, 2, h, w)
    return x.permute(0, 1, 4, 2, 5, 3).reshape(-1, c, 2 * h, 2 * w)


# --- The invertible layers: forward(x) -> (y, logdet (B,) or scalar), inverse(y) -> x.


class ActNorm(nn.Module):
    """Per-channel affine y = (x + loc) exp(log_scale), initialised from the first training batch
    so that each channel starts at zero mean and unit variance (Glow); no batch statistics after.
    Given ``size``, the affine is per position (C, size, size) instead, initialised per position."""

    def __init__(self, channels: int, size: int | None = None):
        super().__init__()
        self.per_position = size is not None
        shape = (1, channels, size, size) if self.per_position else (1, channels, 1, 1)
        self.loc = nn.Parameter(torch.zeros(shape))
        self.log_scale = nn.Parameter(torch.zeros(shape))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def _initialize(self, x: torch.Tensor) -> None:
        dims = (0,) if self.per_position else (0, 2, 3)
        mean = x.mean(dim=dims, keepdim=True)
        std = x.std(dim=dims, keepdim=True)
        self.loc.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + 1e-6))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not bool(self.initialized):
            self._initialize(x)
        positions = x[0].numel() // self.log_scale.numel()  # those sharing each scale: H W, or 1
        return (x + self.loc) * self.log_scale.exp(), self.log_scale.sum() * positions

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.exp(-self.log_scale) - self.loc


class InvertibleConv1x1(nn.Module):
    """Glow's invertible 1x1 convolution in its LU form, W = P L (U + diag(sign_s exp(log_s))),
    so log |det W| = sum(log_s) per pixel. The inverse weight is computed in float64 with
    ``torch.linalg.inv`` while training; a served (exported) copy holds it as a constant instead
    (``freeze_inverse``), since ONNX has no matrix inverse."""

    def __init__(self, channels: int):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64))  # a random rotation
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p.float())
        self.register_buffer("sign_s", torch.sign(s).float())
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.register_buffer("eye", torch.eye(channels))
        self.lower = nn.Parameter(lower.float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_s = nn.Parameter(torch.log(torch.abs(s)).float())
        self.register_buffer("frozen_inverse", None, persistent=False)

    def weight(self) -> torch.Tensor:
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * self.log_s.exp())
        return self.perm @ lower @ upper  # (C, C)

    def inverse_weight(self) -> torch.Tensor:
        if self.frozen_inverse is not None:
            return self.frozen_inverse
        return torch.linalg.inv(self.weight().double()).float()

    @torch.no_grad()
    def freeze_inverse(self) -> None:
        self.frozen_inverse = self.inverse_weight().detach().clone()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c, h, w = x.shape[1:]
        return F.conv2d(x, self.weight().view(c, c, 1, 1)), self.log_s.sum() * (h * w)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        c = y.shape[1]
        return F.conv2d(y, self.inverse_weight().view(c, c, 1, 1))


class AffineCoupling(nn.Module):
    """The channels ``[:split]`` pass unchanged and condition an affine map of the rest:
    y_b = x_b exp(log_s) + t with (t, log_s) = NN(x_a), log_s = scale tanh(raw) bounded as in
    RealNVP. The last convolution starts at zero, so every coupling starts as the identity."""

    def __init__(self, channels: int, split: int, hidden: int):
        super().__init__()
        self.split = split
        out = channels - split
        self.net = nn.Sequential(
            nn.Conv2d(split, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, 2 * out, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.scale = nn.Parameter(torch.ones(1, out, 1, 1))

    def _shift_log_scale(self, xa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift, raw = self.net(xa).chunk(2, dim=1)  # (B, out, H, W) each
        return shift, self.scale * torch.tanh(raw)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xa, xb = x[:, : self.split], x[:, self.split :]
        shift, log_s = self._shift_log_scale(xa)
        return torch.cat([xa, xb * log_s.exp() + shift], dim=1), log_s.flatten(1).sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        ya, yb = y[:, : self.split], y[:, self.split :]
        shift, log_s = self._shift_log_scale(ya)
        return torch.cat([ya, (yb - shift) * torch.exp(-log_s)], dim=1)


class FlowStep(nn.Module):
    """One Glow step: actnorm, invertible 1x1 convolution, affine coupling."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.layers = nn.ModuleList(
            [ActNorm(channels), InvertibleConv1x1(channels), AffineCoupling(channels, channels // 2, hidden)]
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = 0.0
        for layer in self.layers:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        for layer in reversed(self.layers):
            y = layer.inverse(y)
        return y


CHOICE_DIMS = 2  # latent coordinates a mixture flow's sampler reads its component from


def sampler_latent_dim(image_channels: int, image_size: int, top_mixture: int) -> int:
    """The size of the sampler's z: the flow's C H W latent, and with a mixture the pair its
    component is read from (the net and its ONNX signature both ask here)."""
    return image_channels * image_size**2 + (CHOICE_DIMS if top_mixture else 0)


def standard_normal_log_prob(x: torch.Tensor) -> torch.Tensor:
    """log N(x; 0, I) (B,) of rows x (B, D)."""
    return -0.5 * (x.pow(2) + math.log(2 * math.pi)).sum(1)


def component_of(pair: torch.Tensor, components: int) -> torch.Tensor:
    """Two independent N(0, s^2) coordinates (B, 2) -> a component (B,) int64, uniform on
    0 .. components - 1 whatever s: the ratio a / b of the pair is Cauchy for every s, and its CDF
    1/2 + atan(a / b) / pi is uniform. A request's temperature scales the whole latent, so a
    uniform read from one coordinate's scale would not be uniform at other temperatures."""
    a, b = pair[:, 0], pair[:, 1]
    b = torch.where(b == 0, torch.full_like(b, 1e-30), b)  # (B,); a / b stays finite or +-inf
    u = 0.5 + torch.atan(a / b) / math.pi  # (B,) in [0, 1]
    return torch.clamp(torch.floor(u * components), max=components - 1).long()


class GaussianMixturePrior(nn.Module):
    """A density on the top latent h (B, D): (1 / K) sum_k N(h; mean_k, L L^T), one component per
    class, the covariance shared (the Gaussian model of linear discriminant analysis). Built as
    the standard normal (means 0, L = I) until ``fit``."""

    def __init__(self, components: int, dims: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(components, dims))
        self.register_buffer("scale_tril", torch.eye(dims))  # L, lower triangular
        self.register_buffer("frozen_inverse", None, persistent=False)  # L^-1, held by a served copy

    @torch.no_grad()
    def fit(self, h: torch.Tensor, labels: torch.Tensor, shrink: float) -> None:
        """The maximum-likelihood means of the classes 0 .. K-1 and their pooled within-class
        covariance, shrunk towards its mean variance (``shrink`` of the way) against the noise of
        a D x D estimate: h (N, D), labels (N,)."""
        h = h.double()
        mean = torch.stack([h[labels == k].mean(0) for k in range(len(self.mean))])  # (K, D)
        cov = torch.cov((h - mean[labels]).T)  # (D, D)
        eye = torch.eye(len(cov), dtype=cov.dtype)
        cov = (1.0 - shrink) * cov + shrink * cov.diagonal().mean() * eye
        self.mean.copy_(mean.float())
        self.scale_tril.copy_(torch.linalg.cholesky(cov).float())

    def inverse_tril(self) -> torch.Tensor:
        if self.frozen_inverse is not None:
            return self.frozen_inverse
        return torch.linalg.inv(self.scale_tril.double()).float()

    @torch.no_grad()
    def freeze_inverse(self) -> None:
        self.frozen_inverse = self.inverse_tril().detach().clone()

    def log_prob(self, h: torch.Tensor) -> torch.Tensor:
        """log p(h) (B,) of the top latents h (B, D)."""
        inverse = self.inverse_tril()  # (D, D); ONNX has no triangular solve, so a matrix product
        u = h @ inverse.T  # (B, D): L^-1 h
        centres = self.mean @ inverse.T  # (K, D): L^-1 mean_k
        sq = (u.unsqueeze(1) - centres).pow(2).sum(-1)  # (B, K)
        dims, components = self.mean.shape[1], self.mean.shape[0]
        log_norm = 0.5 * dims * math.log(2 * math.pi) - torch.log(torch.diagonal(inverse)).sum()
        return torch.logsumexp(-0.5 * sq, dim=1) - math.log(components) - log_norm

    def sample(self, eps: torch.Tensor, component: torch.Tensor) -> torch.Tensor:
        """h = mean_component + L eps: eps (B, D) standard normal (times a temperature), component (B,)."""
        return self.mean[component] + eps @ self.scale_tril.T


class Flow(nn.Module):
    """forward(s) -> (z (B, D), log |det dz/ds| (B,)) on the preprocessed input s
    (``levels_to_logit``), z standard normal under the model but for the top latent under a
    mixture prior (``log_prob``); inverse(z) -> s. D = C H W."""

    def __init__(self, config: FlowConfig):
        super().__init__()
        if config.image_size % 2**config.levels:
            raise ValueError(f"image_size {config.image_size} is not divisible by 2 ** levels = {2**config.levels}")
        if not isinstance(config.steps_per_level, int) and len(config.steps_per_level) != config.levels:
            raise ValueError(f"steps_per_level {config.steps_per_level} needs one count per level ({config.levels})")
        self.config = config
        c, size = config.image_channels, config.image_size
        self.dims = c * size * size
        self.levels = nn.ModuleList()
        self.splits = nn.ModuleList()  # the factored-out half's conditional prior, one per level but the last
        self.z_shapes: list[tuple[int, int, int]] = []  # what each level factors out, in z's order
        for level in range(config.levels):
            c, size = 4 * c, size // 2
            self.levels.append(nn.ModuleList([FlowStep(c, config.hidden) for _ in range(config.steps_at(level))]))
            if level < config.levels - 1:
                kept = c // 2
                self.splits.append(AffineCoupling(c, kept, config.hidden))
                self.z_shapes.append((c - kept, size, size))
                c = kept
        if config.top_prior not in ("channel", "position"):
            raise ValueError(f"top_prior must be 'channel' or 'position', not {config.top_prior!r}")
        self.top = ActNorm(c, size if config.top_prior == "position" else None)  # the top prior's mean and scale
        self.z_shapes.append((c, size, size))
        self.top_dims = c * size * size
        self.prior = GaussianMixturePrior(config.top_mixture, self.top_dims) if config.top_mixture else None
        self.latent_dim = sampler_latent_dim(config.image_channels, config.image_size, config.top_mixture)

    def forward(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, logdet, parts = s, s.new_zeros(s.shape[0]), []
        for level, steps in enumerate(self.levels):
            x = squeeze(x)
            for step in steps:
                x, ld = step(x)
                logdet = logdet + ld
            if level < len(self.splits):
                x, ld = self.splits[level](x)
                logdet = logdet + ld
                kept = self.splits[level].split
                parts.append(x[:, kept:].flatten(1))
                x = x[:, :kept]
        x, ld = self.top(x)
        parts.append(x.flatten(1))
        return torch.cat(parts, dim=1), logdet + ld  # (B, D), (B,)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        offsets = [0]
        for shape in self.z_shapes:
            offsets.append(offsets[-1] + math.prod(shape))
        part = lambda i: z[:, offsets[i] : offsets[i + 1]].reshape(-1, *self.z_shapes[i])  # noqa: E731
        x = self.top.inverse(part(len(self.z_shapes) - 1))
        for level in reversed(range(len(self.levels))):
            if level < len(self.splits):
                x = self.splits[level].inverse(torch.cat([x, part(level)], dim=1))
            for step in reversed(self.levels[level]):
                x = step.inverse(x)
            x = unsqueeze(x)
        return x  # (B, C, H, W)

    def bits_per_dim(self, levels: torch.Tensor, offset: torch.Tensor | float) -> torch.Tensor:
        """-log2 of the model density of the dequantized image v + offset, per dimension (B,): the
        full change of variables, z <- s <- (v + offset), under z's density ``log_prob``."""
        s, logdet_pre = levels_to_logit(levels, offset, self.config.logit_alpha)
        z, logdet = self(s)
        log_pz = self.log_prob(z)
        return -(log_pz + logdet + logdet_pre) / (self.dims * math.log(2.0))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) (B,) of the flow's output z (B, D): standard normal, the top latent under the
        mixture if there is one."""
        if self.prior is None:
            return standard_normal_log_prob(z)
        rest, top = z[:, : -self.top_dims], z[:, -self.top_dims :]
        return standard_normal_log_prob(rest) + self.prior.log_prob(top)

    def latent_of(self, z: torch.Tensor) -> torch.Tensor:
        """The sampler's latent (B, latent_dim), standard normal times a temperature -> the flow's z
        (B, D) to invert: with a mixture, the top latent is its component's mean plus L times
        its part of the latent, the component read from the last two coordinates."""
        if self.prior is None:
            return z
        rest, eps = z[:, : self.dims - self.top_dims], z[:, self.dims - self.top_dims : self.dims]
        component = component_of(z[:, self.dims :], len(self.prior.mean))
        return torch.cat([rest, self.prior.sample(eps, component)], dim=1)

    def frozen(self) -> Flow:
        """An eval-mode copy whose 1x1 convolutions hold their inverse weights as constants: the
        inverse it computes then exports to ONNX, and later training does not change it."""
        net = copy.deepcopy(self).eval().requires_grad_(False)
        for module in net.modules():
            if isinstance(module, InvertibleConv1x1 | GaussianMixturePrior):
                module.freeze_inverse()
        return net


def image_to_levels(image: torch.Tensor) -> torch.Tensor:
    """Model-range images in [-1, 1] on the 256 levels (v / 127.5 - 1) -> levels in [0, 255]."""
    return torch.clamp(torch.round((image + 1.0) * 127.5), 0.0, LEVELS - 1.0)


def levels_to_image(levels: torch.Tensor) -> torch.Tensor:
    """Continuous levels v + u in [0, 256) -> [-1, 1] such that the server's rounding
    rint((x + 1) 127.5) gives floor(v + u) = v: the bin an image sample fell in."""
    return torch.clamp((levels - 0.5) / 127.5 - 1.0, -1.0, 1.0)


class FlowSampler(nn.Module):
    """The default served graph: z (B, latent_dim) (standard normal, times the request's
    temperature) -> image (B, C, H, W) in [-1, 1]."""

    def __init__(self, net: Flow):
        super().__init__()
        self.net = net.frozen()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        s = self.net.inverse(self.net.latent_of(z))
        return levels_to_image(logit_to_levels(s, self.net.config.logit_alpha))


class FlowLikelihood(nn.Module):
    """The ``likelihood`` graph: image (B, C, H, W) in [-1, 1] on the 256 levels -> bits per
    dimension (B,) of the discrete image, dequantized at the bin centres (level + 0.5): the
    centre-point estimate of -log2 P(image) / D, deterministic."""

    def __init__(self, net: Flow):
        super().__init__()
        self.net = net.frozen()  # a mixture prior's inverse factor as a constant

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net.bits_per_dim(image_to_levels(image), 0.5)
