"""The trainable part: the paper's conv head ("Conv-AE"), the dense classifier, and the
optional dense branches beside the head: an MLP of the raw embedding (fusion) and one of the
image's pixels (a skip connection around the extractor)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _xavier(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ConvHead(nn.Module):
    """Four 3 x 3 conv layers, each followed by ReLU and BatchNorm, then flattened.

    The spatial grid is kept (no global pooling): in a DeepInsight image a position is a
    group of embedding features, so pooling it away would discard the meaning.
    """

    def __init__(self, in_channels: int, channels=(128, 128, 64, 32)):
        super().__init__()
        layers, prev = [], in_channels
        for out in channels:
            layers += [nn.Conv2d(prev, out, 3, padding=1), nn.ReLU(inplace=True),
                       nn.BatchNorm2d(out)]
            prev = out
        self.body = nn.Sequential(*layers)
        _xavier(self)

    def forward(self, x):
        return torch.flatten(self.body(x), 1)


class Classifier(nn.Module):
    """Three fully connected layers, dropout after the first two."""

    def __init__(self, in_features: int, n_classes: int, hidden=(256, 64), dropout=0.3):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(in_features, hidden[0]), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden[0], hidden[1]), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden[1], n_classes))
        _xavier(self)

    def forward(self, x):
        return self.body(x)


class DenseBranch(nn.Module):
    """BatchNorm -> Linear -> ReLU of a flat vector (the raw embedding, or the image's pixels),
    concatenated with the conv head's features before the classifier.

    BatchNorm standardises each input feature over the data (a per-row LayerNorm would
    remove a row's mean, which can carry the class)."""

    def __init__(self, in_features: int, hidden: int = 256):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm1d(in_features), nn.Linear(in_features, hidden),
                                  nn.ReLU(inplace=True))
        _xavier(self)

    def forward(self, x):
        return self.body(x)


def to_extractor_input(images: torch.Tensor, upsample: int = 1) -> torch.Tensor:
    """``[B, H, W]`` grey images -> ``[B, 3, H * k, W * k]`` (nearest upsampling by ``k``)."""
    x = images.unsqueeze(1)
    if upsample > 1:
        x = F.interpolate(x, scale_factor=upsample, mode="nearest")
    return x.expand(-1, 3, -1, -1)


class ImageClassifier(nn.Module):
    """extractor -> conv head (-> concat embedding MLP) -> classifier.

    ``forward(images, embeddings=None)`` takes normalised ``[B, H, W]`` images;
    ``forward_features(features, embeddings=None, images=None)`` takes the extractor's outputs
    (the path used with the feature cache; ``images`` feeds the pixel branch).

    ``pixel_dim`` (the number of pixels of an image) adds a branch of the normalised pixels
    beside the conv head: a skip connection around the extractor, whose strided convolutions
    (with random weights especially) discard part of the grid. ``pixel_hidden > 0``: a
    :class:`DenseBranch` concatenated before the classifier; ``0``: a linear map of the pixels
    added to the logits (the "wide" part of a wide-and-deep model: the linear probe on the
    pixels, trained jointly with the CNN route).
    """

    def __init__(self, extractor, feature_shape, n_classes: int, *,
                 head_channels=(128, 128, 64, 32), hidden=(256, 64), dropout=0.3,
                 embedding_dim: int | None = None, embedding_hidden: int = 256,
                 pixel_dim: int | None = None, pixel_hidden: int = 256, upsample: int = 1):
        super().__init__()
        self.extractor = extractor
        #: output shape ``(C, h, w)`` of the extractor on one image
        self.feature_shape = tuple(feature_shape)
        self.upsample = upsample
        #: memory format of the extractor's input (channels_last on CUDA)
        self.memory_format = torch.contiguous_format
        self.head = ConvHead(feature_shape[0], head_channels)
        # the flattened width, found in eval mode: a train-mode pass would move the BatchNorm
        # running statistics (towards those of an all-zero input) before training starts
        self.head.eval()
        with torch.no_grad():
            n_flat = self.head.body(torch.zeros(1, *feature_shape)).numel()
        self.head.train()
        self.embedding_mlp = (DenseBranch(embedding_dim, embedding_hidden)
                              if embedding_dim else None)
        self.pixel_mlp = None
        if pixel_dim:
            self.pixel_mlp = (DenseBranch(pixel_dim, pixel_hidden) if pixel_hidden
                              else nn.Linear(pixel_dim, n_classes))
        n_in = (n_flat + (embedding_hidden if embedding_dim else 0)
                + (pixel_hidden if pixel_dim else 0))
        self.classifier = Classifier(n_in, n_classes, hidden, dropout)

    def extract(self, images):
        x = to_extractor_input(images, self.upsample).contiguous(memory_format=self.memory_format)
        return self.extractor(x)

    def forward_features(self, features, embeddings=None, images=None):
        parts = [self.head(features)]
        if self.embedding_mlp is not None:
            parts.append(self.embedding_mlp(embeddings))
        wide = isinstance(self.pixel_mlp, nn.Linear)
        if self.pixel_mlp is not None and not wide:
            parts.append(self.pixel_mlp(torch.flatten(images, 1)))
        logits = self.classifier(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])
        if wide:
            logits = logits + self.pixel_mlp(torch.flatten(images, 1))
        return logits

    def forward(self, images, embeddings=None):
        return self.forward_features(self.extract(images), embeddings, images)


def feature_shape(extractor, image_shape, upsample: int = 1) -> tuple:
    """Output shape ``(C, h, w)`` of ``extractor`` on one ``image_shape`` image.

    Runs in eval mode (restored afterwards), so no BatchNorm statistics move."""
    was_training = extractor.training
    extractor.eval()
    try:
        with torch.no_grad():
            out = extractor(to_extractor_input(torch.zeros(1, *image_shape), upsample))
    finally:
        extractor.train(was_training)
    return tuple(out.shape[1:])


#: the largest upsampling tried when looking for one that makes small images large enough
MAX_UPSAMPLE_TRIED = 32


def _checked_feature_shape(extractor, name: str, image_shape, upsample: int) -> tuple:
    """:func:`feature_shape`, with images too small for the extractor's cut (its strides and
    poolings leave less than one pixel of them) refused as a ValueError that names the
    smallest ``--upsample`` that fits them."""
    try:
        return feature_shape(extractor, image_shape, upsample)
    except RuntimeError as exc:
        for larger in range(upsample + 1, MAX_UPSAMPLE_TRIED + 1):
            try:
                feature_shape(extractor, image_shape, larger)
            except RuntimeError:
                continue
            height, width = image_shape
            raise ValueError(
                f"{height} x {width} images are too small for the {name} extractor (its "
                f"strides and poolings leave nothing of them): train with upsample={larger} "
                f"or more, or build the store with a larger grid (LayoutConfig(grid=...), "
                f"build-dataset --pixels)"
            ) from exc
        raise


def build_classifier(config, image_shape, n_classes: int, *, embedding_dim: int | None = None,
                     weights="config") -> ImageClassifier:
    """The classifier a :class:`~fastimg.train.TrainConfig` describes, on ``image_shape`` images.

    ``fit`` builds it with the config's extractor weights; ``predict`` with ``weights=None``
    (random init: ``best.pt`` then overwrites every parameter and buffer), so one function
    decides the architecture for both and a saved run always reloads.
    """
    from fastimg.train.extractors import build_extractor

    extractor = build_extractor(config.extractor,
                                config.weights if weights == "config" else weights,
                                unfreeze_fraction=config.unfreeze_fraction, cut=config.cut)
    shape = _checked_feature_shape(extractor, config.extractor, image_shape, config.upsample)
    return ImageClassifier(
        extractor, shape, n_classes, head_channels=config.head_channels, hidden=config.hidden,
        dropout=config.dropout, embedding_dim=embedding_dim if config.fuse_embedding else None,
        embedding_hidden=config.embedding_hidden,
        pixel_dim=math.prod(image_shape) if config.pixel_branch else None,
        pixel_hidden=config.pixel_hidden, upsample=config.upsample)
