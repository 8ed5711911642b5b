"""DeepInsight layout: scale features, embed them in 2-D, assign each a pixel."""
from .config import LayoutConfig
from .embedding import TSNE_BACKENDS, embed_points
from .layout import DeepInsightLayout
from .pixels import assign_pixels, rotate_to_bounding_rectangle
from .scaling import FeatureScaler

__all__ = ["DeepInsightLayout", "LayoutConfig", "FeatureScaler", "TSNE_BACKENDS",
           "embed_points", "assign_pixels", "rotate_to_bounding_rectangle"]
