"""The trainable part: the paper's conv head ("Conv-AE"), the dense classifier, and the
optional MLP of the raw embedding for fusion."""
from __future__ import annotations

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


class EmbeddingMLP(nn.Module):
    """BatchNorm -> Linear -> ReLU of the raw embedding, fused before the classifier.

    BatchNorm standardises each embedding feature over the data (a per-row LayerNorm would
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
    ``forward_features(features, embeddings=None)`` takes the extractor's outputs (the path
    used with the feature cache).
    """

    def __init__(self, extractor, feature_shape, n_classes: int, *, head_channels=(128, 128, 64, 32),
                 hidden=(256, 64), dropout=0.3, embedding_dim: int | None = None,
                 embedding_hidden: int = 256, upsample: int = 1):
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
        self.embedding_mlp = (EmbeddingMLP(embedding_dim, embedding_hidden)
                              if embedding_dim else None)
        n_in = n_flat + (embedding_hidden if embedding_dim else 0)
        self.classifier = Classifier(n_in, n_classes, hidden, dropout)

    def extract(self, images):
        x = to_extractor_input(images, self.upsample).contiguous(memory_format=self.memory_format)
        return self.extractor(x)

    def forward_features(self, features, embeddings=None):
        z = self.head(features)
        if self.embedding_mlp is not None:
            z = torch.cat([z, self.embedding_mlp(embeddings)], dim=1)
        return self.classifier(z)

    def forward(self, images, embeddings=None):
        return self.forward_features(self.extract(images), embeddings)


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
    shape = feature_shape(extractor, image_shape, config.upsample)
    return ImageClassifier(
        extractor, shape, n_classes, head_channels=config.head_channels, hidden=config.hidden,
        dropout=config.dropout, embedding_dim=embedding_dim if config.fuse_embedding else None,
        embedding_hidden=config.embedding_hidden, upsample=config.upsample)
