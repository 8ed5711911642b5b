"""``LayoutConfig``: how a layout is fitted, checked when made and saved with every layout."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from fastimg._validation import check_count, check_description, check_grid, check_seed, is_whole

from .embedding import METHODS, TSNE_BACKENDS, TSNE_METRICS
from .pixels import ASSIGNMENTS
from .scaling import SCALINGS

#: most threads of a layout fit: openTSNE with 100,000 threads crashed the process
#: (segmentation fault) and with 2,000 ran for minutes on 2 cores instead of seconds
MAX_THREADS = 1024


@dataclass(frozen=True)
class LayoutConfig:
    """How a layout is fitted (saved with every layout and every store).

    Parameters
    ----------
    grid : int or (int, int)
        Image size ``(height, width)``; an int means a square grid.
    scaling : {"norm2", "minmax", "none"}
        Feature scaling fitted on the training rows.
    method : {"tsne", "pca", "kpca"}
        2-D embedding of the features.
    backend : {"auto", "opentsne", "sklearn", "cuml"}
        t-SNE implementation; ``"auto"`` prefers cuML on a GPU, then openTSNE.
    perplexity : float
        t-SNE perplexity, positive and finite; needs more than ``3 * perplexity`` features.
    metric : {"cosine", "euclidean", "manhattan"}
        Distance between features for t-SNE (DeepInsight uses ``"cosine"``); the distances
        every t-SNE backend computes.
    pca_components : int or None
        Reduce the transposed matrix to this many dimensions with PCA before t-SNE when it has
        more samples than that (40k training rows become 50 dimensions); ``None`` disables it.
        The PCA is randomized (``pca_power_iterations`` power iterations) and runs in float32
        on the scaled matrix, which is made in float32 without float64 temporaries.
    pca_power_iterations : int
        Power iterations of the randomized PCA. 3 (sklearn's "auto" would pick 7) halves the
        PCA time on a 40,000 x 4,608 matrix; the 2-D map only uses the PCA to find each
        feature's t-SNE neighbours, and the layout's trustworthiness did not drop (measured
        with ``python -m benchmarks layout``).
    assignment : {"assignment", "bin"}
        ``assignment`` (the default) gives each feature its own pixel: a linear sum assignment
        of the t-SNE coordinates to pixel centres, after k-means grouping when there are more
        features than pixels. ``bin`` is DeepInsight's (and pyDeepInsight's) default: features
        that fall on one pixel share it and are averaged. Measured on the full IMDB store
        (MiniLM, 2,304 features on 50 x 50; ``benchmarks/RESULTS.md``, Accuracy): ``bin``
        averages them onto 898 pixels, and a linear probe on the pixels scores 0.847 on
        validation (0.848 test); ``assignment`` keeps all 2,304 apart, 0.861 (0.858 test, as
        much as the probe on the embeddings, 0.856), and the default trainer gains with it.
    fill_value : float
        Value of pixels no feature falls on (finite).
    random_state : int or None
        Seed for every random step; the same seed gives the same layout.
    n_jobs : int
        CPU threads of the fit: t-SNE's, and BLAS's and OpenMP's in the PCA and k-means (-1:
        all cores, and BLAS left as it is). The default is 1, for two reasons. The layout
        depends on the thread count (openTSNE's gradient and BLAS's sums are split by thread;
        each count gives its own layout, the same every run), so 1 gives the same layout
        whatever the machine's cores or ``OMP_NUM_THREADS``. And t-SNE here
        runs on the features (a few thousand points), where threads lose a lot on a shared
        machine (2 threads were 2-3x *slower* than 1 on a busy 2-core machine, measured per 100
        iterations in one process). Raise it on a dedicated many-core machine, where it is
        faster, or for tens of thousands of features; the thread count is part of the layout
        stage's settings.

    Raises
    ------
    ValueError
        When a setting is of the wrong type or out of range (numpy scalars are accepted and
        stored as Python numbers, so that :meth:`to_dict` is JSON-safe).
    """

    grid: tuple[int, int] = (50, 50)
    scaling: str = "norm2"
    method: str = "tsne"
    backend: str = "auto"
    perplexity: float = 30.0
    metric: str = "cosine"
    pca_components: int | None = 50
    pca_power_iterations: int = 3
    assignment: str = "assignment"
    fill_value: float = 0.0
    random_state: int | None = 0
    n_jobs: int = 1

    def __post_init__(self):
        object.__setattr__(self, "grid", check_grid(self.grid))
        for name, value, allowed in (("scaling", self.scaling, SCALINGS),
                                     ("method", self.method, METHODS),
                                     ("assignment", self.assignment, ASSIGNMENTS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        TSNE_BACKENDS.resolve(self.backend)  # unknown names fail here, not after the fit
        if self.metric not in TSNE_METRICS:  # a typo fails here, not after the encode
            raise ValueError(f"metric must be one of {TSNE_METRICS}, got {self.metric!r}")
        # numbers become plain Python ints and floats: numpy scalars would pass every check
        # and then break the JSON the config is saved as (the store's attrs, the stage keys)
        perplexity = _real("perplexity", self.perplexity)
        if not perplexity > 0:
            raise ValueError(f"perplexity must be a positive, finite number, got "
                             f"{self.perplexity!r}")
        fill_value = _real("fill_value", self.fill_value)
        pca_components = self.pca_components
        if pca_components is not None:
            pca_components = check_count("pca_components", pca_components, 2, "or None")
        power_iterations = check_count("pca_power_iterations", self.pca_power_iterations, 0)
        random_state = self.random_state
        if random_state is not None:
            random_state = check_seed("random_state", random_state)
        if (not is_whole(self.n_jobs) or self.n_jobs == 0 or self.n_jobs < -1
                or self.n_jobs > MAX_THREADS):
            raise ValueError(f"n_jobs must be a number of threads (1 to {MAX_THREADS}) or -1 "
                             f"(all cores), got {self.n_jobs!r}")
        for name, value in (("perplexity", perplexity), ("fill_value", fill_value),
                            ("pca_components", pca_components),
                            ("pca_power_iterations", power_iterations),
                            ("random_state", random_state), ("n_jobs", int(self.n_jobs))):
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict:
        """A JSON-ready dict (``grid`` as a list)."""
        data = asdict(self)
        data["grid"] = list(self.grid)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "LayoutConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError (a misspelt setting would
        otherwise fall back to its default unsaid; a stored layout of a newer fastimg is read
        by :meth:`DeepInsightLayout.from_dict`, which leaves out the fields it does not
        know)."""
        check_description(cls, data)
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown LayoutConfig keys: {unknown}; the fields are "
                             f"{[f.name for f in fields(cls)]}")
        return cls(**data)


def _real(name: str, value) -> float:
    """``value`` (a Python number as given, a numpy scalar as a Python number: the settings
    of stores built before keep their stage keys) if finite, else ValueError naming
    ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                      np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value.item() if isinstance(value, np.generic) else value
