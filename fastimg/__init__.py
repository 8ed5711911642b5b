"""fastimg: text corpora to DeepInsight images for pretrained vision CNNs, fast."""
import logging

__version__ = "0.1.0"

logging.getLogger("fastimg").addHandler(logging.NullHandler())

__all__ = ["__version__", "DeepInsightLayout", "LayoutConfig", "rasterize", "build_dataset",
           "relayout", "DatasetConfig", "texts_to_images"]


def __getattr__(name):
    # heavy imports (scipy, sklearn, numba) wait until the user asks for them
    if name in ("DeepInsightLayout", "LayoutConfig"):
        from fastimg import layout

        return getattr(layout, name)
    if name in ("build_dataset", "relayout", "DatasetConfig", "texts_to_images"):
        from fastimg import dataset

        return getattr(dataset, name)
    if name == "rasterize":
        from fastimg.raster import rasterize

        return rasterize
    raise AttributeError(f"module 'fastimg' has no attribute {name!r}")


def __dir__():
    # the lazy names above, for tab completion and help()
    return sorted(set(globals()) | set(__all__))
