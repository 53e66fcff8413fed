"""A small style-based generator (Karras et al. 2019, StyleGAN; 2020, StyleGAN2) for 28x28 digits.

A mapping MLP turns z into w; the synthesis network starts from a learned 7x7 constant and
doubles to 14x14 and 28x28. Every synthesis layer reads its own copy of w through an affine
"style" and applies it as a StyleGAN2 modulated convolution with demodulation; each layer adds
per-pixel noise with a learned per-channel strength, and a skip of 1x1 "toRGB" outputs sums the
image over resolutions. Linear layers and convolutions use the equalised learning rate (weights
drawn from N(0, 1), scaled by He's constant at run time), which Adam needs to train all layers
at the same speed.

The served module is the generator itself: ``forward(z, psi, mix_z, mix_layer)`` maps both
latents, truncates both towards ``w_avg`` (an EMA of the mapped w, tracked during training),
and gives synthesis layer i the first w if i < mix_layer, else the second. In eval mode the noise
is a fixed buffer per layer (StyleGAN's noise_mode='const'), so an image depends on its own
inputs only; in training mode it is drawn afresh."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from genserve.nets.dcgan import code_one_hot

BASE_SIZE = 7  # the learned constant's side; each synthesis block doubles it
ACT_GAIN = math.sqrt(2.0)  # keeps the activations' second moment through leaky ReLU (StyleGAN2)


@dataclass
class StyleGANConfig:
    latent_dim: int = 64
    w_dim: int = 64
    mapping_layers: int = 4
    # The mapping network learns slower than the rest, so w drifts slowly and the synthesis network
    # can follow it. StyleGAN's 0.01 is for runs of ~1M steps; in a few thousand steps it would
    # leave the mapping at its random initialisation.
    mapping_lr_mul: float = 0.1
    gen_features: int = 32  # channels at 28x28; 7x7 and 14x14 have twice as many
    # channels at 28x28; twice as many at 14x14, four times at 7x7. Below the generator's: the
    # discriminator runs three times per step (real, fake, fake for the generator) and dominates
    # its cost (at 16 a step takes 0.22 CPU-seconds at batch 32 on one thread, at 24 0.35); at 24
    # the unconditional generator is 0.88 confident at seed 2026, at 16 0.85 (same recipe otherwise).
    disc_features: int = 24
    # Synthesis layers that read a w: one at 7x7, two per doubling (1 + 2 * log2(image_size / 7)).
    # A request's mix layer is checked against it.
    style_layers: int = 5
    w_avg_beta: float = 0.995  # decay of the w_avg EMA, per training step
    # k > 0: trained class-conditional, served unconditional. An image's class is the argmax of its
    # z's first k coordinates (uniform over the k classes, so a sample is a draw of the mixture of
    # the classes); the mapping network embeds it one-hot and reads it beside the other coordinates,
    # as StyleGAN2-ADA reads a label. The discriminator projects its features on an embedding of
    # the class (Miyato & Koyama 2018): a real digit's label, a generated image's class.
    classes: int = 0
    image_channels: int = 1
    image_size: int = 28

    def __post_init__(self) -> None:
        doublings = math.log2(self.image_size / BASE_SIZE)
        if doublings < 0 or doublings != int(doublings):
            raise ValueError(f"image_size must be {BASE_SIZE} * 2^k, got {self.image_size}")
        if self.style_layers != 1 + 2 * int(doublings):
            raise ValueError(
                f"style_layers is 1 + 2 * log2(image_size / {BASE_SIZE}) = {1 + 2 * int(doublings)} "
                f"for image_size {self.image_size}, got {self.style_layers}"
            )


class EqualLinear(nn.Module):
    """Linear layer with the equalised learning rate and an optional lr multiplier."""

    def __init__(self, in_features: int, out_features: int, bias_init: float = 0.0, lr_mul: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mul))
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.weight_gain, self.bias * self.lr_mul)


class EqualConv2d(nn.Module):
    """Convolution with the equalised learning rate (the discriminator's layers)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.padding)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """Each row (B, D) divided by its root mean square (StyleGAN's second-moment normalisation)."""
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class MappingNetwork(nn.Module):
    """z (B, latent_dim) -> w (B, w_dim): second-moment normalisation of z, then an MLP; with
    classes, z's first k coordinates are read as the class (their argmax), embedded."""

    def __init__(self, config: StyleGANConfig):
        super().__init__()
        self.classes = config.classes
        self.embed = EqualLinear(self.classes, config.w_dim) if self.classes else None  # the class, one-hot
        first = config.latent_dim - self.classes + (config.w_dim if self.classes else 0)
        dims = [first] + [config.w_dim] * config.mapping_layers
        self.layers = nn.ModuleList(
            EqualLinear(a, b, lr_mul=config.mapping_lr_mul) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = _normalize(z[:, self.classes :])  # (B, latent_dim - k)
        if self.embed is not None:
            label = _normalize(self.embed(code_one_hot(z, self.classes)))  # (B, w_dim)
            x = torch.cat([x, label], dim=1)  # (B, latent_dim - k + w_dim)
        for layer in self.layers:
            x = F.leaky_relu(layer(x), 0.2) * ACT_GAIN
        return x  # (B, w_dim)


class ModulatedConv2d(nn.Module):
    """StyleGAN2's modulated convolution. Scaling the input channels by the style and the output
    channels by the demodulation factor is the same computation as scaling the weights per image
    (StyleGAN2's fused_modconv=False), with one shared weight: no grouped convolution, and an
    image's result does not depend on the others in its batch."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        w_dim: int,
        demodulate: bool = True,
        up: bool = False,
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)  # styles start at 1: plain convolution
        self.demodulate, self.up, self.padding = demodulate, up, kernel_size // 2

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        style = self.affine(w)  # (B, in)
        weight = self.weight * self.weight_gain  # (out, in, k, k)
        x = x * style[:, :, None, None]  # (B, in, H, W)
        if self.up:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)  # (B, in, 2H, 2W)
        x = F.conv2d(x, weight, padding=self.padding)  # (B, out, H', W')
        if self.demodulate:
            # 1 / ||weight * style|| per image and output channel: the output's expected second moment is 1.
            sq = weight.square().sum(dim=(2, 3))  # (out, in)
            demod = torch.rsqrt(style.square() @ sq.t() + 1e-8)  # (B, out)
            x = x * demod[:, :, None, None]
        return x


class StyledLayer(nn.Module):
    """Modulated 3x3 convolution, noise with a learned per-channel strength, bias, leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, size: int, up: bool = False):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, w_dim, up=up)
        self.noise_strength = nn.Parameter(torch.zeros(out_channels))  # starts silent (StyleGAN2)
        self.bias = nn.Parameter(torch.zeros(out_channels))
        # The noise the eval-mode (served) graph adds, stored with the weights.
        self.register_buffer("noise_const", torch.randn(1, 1, size, size))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = self.conv(x, w)  # (B, out, H, W)
        if self.training:
            noise = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], dtype=x.dtype)  # (B, 1, H, W)
        else:
            noise = self.noise_const  # (1, 1, H, W): the same for every image of the batch
        x = x + self.noise_strength[None, :, None, None] * noise + self.bias[None, :, None, None]
        return F.leaky_relu(x, 0.2) * ACT_GAIN


class ToImage(nn.Module):
    """StyleGAN2's toRGB: a modulated 1x1 convolution without demodulation, plus a bias."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.conv(x, w) + self.bias[None, :, None, None]


class SynthesisNetwork(nn.Module):
    """ws (B, style_layers, w_dim) -> image (B, C, S, S) in [-1, 1]. Layer 0 convolves the 7x7
    constant; each doubling has an upsampling layer and a plain one. Each resolution's toRGB reads
    the w of the layer before it, and the upsampled image so far is added to it (the skip
    generator of StyleGAN2)."""

    def __init__(self, config: StyleGANConfig):
        super().__init__()
        f, w_dim, c = config.gen_features, config.w_dim, config.image_channels
        doublings = (config.style_layers - 1) // 2
        channels = [2 * f] * doublings + [f]  # per resolution, from 7x7 up
        self.const = nn.Parameter(torch.randn(1, channels[0], BASE_SIZE, BASE_SIZE))
        self.layers = nn.ModuleList([StyledLayer(channels[0], channels[0], w_dim, BASE_SIZE)])
        self.to_images = nn.ModuleList([ToImage(channels[0], c, w_dim)])
        for i in range(doublings):
            size = BASE_SIZE * 2 ** (i + 1)
            self.layers.append(StyledLayer(channels[i], channels[i + 1], w_dim, size, up=True))
            self.layers.append(StyledLayer(channels[i + 1], channels[i + 1], w_dim, size))
            self.to_images.append(ToImage(channels[i + 1], c, w_dim))

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        x = self.const.expand(ws.shape[0], -1, -1, -1)  # (B, 2f, 7, 7)
        x = self.layers[0](x, ws[:, 0])
        img = self.to_images[0](x, ws[:, 0])  # (B, C, 7, 7)
        for i, to_image in enumerate(self.to_images[1:]):
            up, plain = 1 + 2 * i, 2 + 2 * i
            x = self.layers[plain](self.layers[up](x, ws[:, up]), ws[:, plain])  # (B, ch, 2H, 2W)
            img = F.interpolate(img, scale_factor=2.0, mode="bilinear", align_corners=False) + to_image(x, ws[:, plain])
        # tanh, not StyleGAN's linear output: the digits' background is exactly -1, which a
        # saturating output reaches without the discriminator having to police it.
        return torch.tanh(img)


def mix_styles(w: torch.Tensor, w2: torch.Tensor, mix_layer: torch.Tensor, num_layers: int) -> torch.Tensor:
    """Per-layer styles (B, num_layers, w_dim): layer i of image b takes w[b] if i < mix_layer[b], else w2[b]."""
    first = torch.arange(num_layers, device=w.device)[None, :] < mix_layer[:, None]  # (B, L)
    return torch.where(first[:, :, None], w[:, None, :], w2[:, None, :])


class StyleGANGenerator(nn.Module):
    def __init__(self, config: StyleGANConfig):
        super().__init__()
        self.config = config
        self.mapping = MappingNetwork(config)
        self.synthesis = SynthesisNetwork(config)
        self.register_buffer("w_avg", torch.zeros(config.w_dim))

    @torch.no_grad()
    def track_w_avg(self, w: torch.Tensor) -> None:
        """Move ``w_avg`` towards the mean of a training batch's mapped w (B, w_dim)."""
        self.w_avg.lerp_(w.detach().mean(dim=0), 1.0 - self.config.w_avg_beta)

    def truncate(self, w: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        """The truncation trick per image: w_avg + psi (w - w_avg); w (B, w_dim), psi (B,)."""
        return self.w_avg + psi[:, None] * (w - self.w_avg)

    def forward(self, z: torch.Tensor, psi: torch.Tensor, mix_z: torch.Tensor, mix_layer: torch.Tensor) -> torch.Tensor:
        """Latents z, mix_z (B, latent_dim), truncation psi (B,) float and int64 mix_layer (B,) ->
        images (B, C, S, S) in [-1, 1]. mix_layer >= style_layers: mix_z is not used."""
        w = self.truncate(self.mapping(z), psi)  # (B, w_dim)
        w2 = self.truncate(self.mapping(mix_z), psi)  # (B, w_dim)
        return self.synthesis(mix_styles(w, w2, mix_layer, self.config.style_layers))


def _minibatch_stddev(x: torch.Tensor, group_size: int = 4) -> torch.Tensor:
    """StyleGAN's minibatch standard deviation: append, as one more channel, the mean standard
    deviation of the features over groups of images, so the discriminator sees how varied a batch
    is and penalises a collapsed generator."""
    b, c, h, w = x.shape
    g = math.gcd(group_size, b)
    y = x.reshape(g, b // g, c, h, w)  # image i of a group of g is x[i * (b // g) + j]
    y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (b // g,)
    y = y.repeat(g)[:, None, None, None].expand(b, 1, h, w)  # (B, 1, H, W)
    return torch.cat([x, y], dim=1)


class DiscriminatorBlock(nn.Module):
    """StyleGAN2's residual discriminator block, halving the resolution: 3x3 conv, 2x2 average
    pool, 3x3 conv to more channels; the skip is pooled and 1x1-convolved; the sum scaled by 1/sqrt 2."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.avg_pool2d(F.leaky_relu(self.conv0(x), 0.2) * ACT_GAIN, 2)  # (B, in, H/2, W/2)
        y = F.leaky_relu(self.conv1(y), 0.2) * ACT_GAIN  # (B, out, H/2, W/2)
        return (self.skip(F.avg_pool2d(x, 2)) + y) / math.sqrt(2.0)


class StyleGANDiscriminator(nn.Module):
    """Image (B, C, S, S) -> logits (B,): fromRGB, residual blocks down to 7x7, minibatch stddev,
    a 3x3 conv and two linear layers (StyleGAN2's resnet discriminator, without normalisation, so
    the R1 penalty is per image)."""

    def __init__(self, config: StyleGANConfig):
        super().__init__()
        f = config.disc_features
        doublings = (config.style_layers - 1) // 2
        channels = [f * 2**i for i in range(doublings + 1)]  # from S x S down to 7x7
        self.from_image = EqualConv2d(config.image_channels, channels[0], 1)
        self.blocks = nn.Sequential(
            *(DiscriminatorBlock(a, b) for a, b in zip(channels[:-1], channels[1:], strict=True))
        )
        top = channels[-1]
        self.conv = EqualConv2d(top + 1, top, 3)
        self.fc = EqualLinear(top * BASE_SIZE * BASE_SIZE, top)
        self.out = EqualLinear(top, 1)
        self.class_embed = nn.Embedding(config.classes, top) if config.classes else None
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.weight, 0.0, 0.02)  # the projection term starts small

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.from_image(x), 0.2) * ACT_GAIN  # (B, f, S, S)
        x = self.blocks(x)  # (B, top, 7, 7)
        x = F.leaky_relu(self.conv(_minibatch_stddev(x)), 0.2) * ACT_GAIN  # (B, top, 7, 7)
        return F.leaky_relu(self.fc(x.flatten(1)), 0.2) * ACT_GAIN  # (B, top)

    def forward(self, x: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B,) of images x (B, C, S, S); a class-conditional discriminator needs each
        image's class ``label`` (B,) int64."""
        h = self._features(x)  # (B, top)
        logits = self.out(h).flatten()
        if self.class_embed is None:
            return logits
        if label is None:
            raise ValueError("a class-conditional discriminator needs each image's label")
        return logits + (self.class_embed(label) * h).sum(dim=1)
