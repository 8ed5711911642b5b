"""fastimg: text corpora to DeepInsight images for pretrained vision CNNs, fast.

fastimg logs to the ``fastimg`` logger (``fastimg.corpus``, ``fastimg.train``, ...). Its
warnings (a setting that changed nothing, empty texts, a layout fitted on few rows, a figure
chosen on validation) reach a program that set up no logging through Python's last-resort
handler, on stderr, as a notebook shows them; ``logging.getLogger("fastimg")`` controls them.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "DeepInsightLayout", "LayoutConfig", "rasterize", "build_dataset",
           "relayout", "DatasetConfig", "texts_to_images"]


#: Subpackages and public modules reached as attributes after a bare ``import fastimg``, as the
#: README writes them (``fastimg.embed.load_model(...)``), imported on first use.
_SUBPACKAGES = ("corpus", "dataset", "embed", "images", "kernels", "layout", "raster", "store",
                "train")


def __getattr__(name):
    # heavy imports (scipy, sklearn, numba) wait until the user asks for them
    if name in _SUBPACKAGES:
        import importlib

        return importlib.import_module(f"fastimg.{name}")
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
