"""The layout suite's order of work, with its fits replaced (no t-SNE runs here)."""
import types

import numpy as np


def test_fastimg_is_warmed_before_its_timed_fit(monkeypatch):
    """benchmarks/RESULTS.md says every suite warms up first, but the layout suite timed
    fastimg's first fit in the process, one-off costs (openTSNE's and scikit-learn's first
    calls, thread pools) included."""
    from benchmarks import layout

    fits = []

    class Layout:
        def __init__(self, **settings):
            pass

        def fit(self, x):
            fits.append(("fastimg", x.shape))
            self.coords_ = np.zeros((x.shape[1], 2))
            self.backend_, self.n_occupied_pixels = "opentsne", 1
            return self

    def baseline_fit(x, shift=0.0):
        fits.append(("baseline", x.shape))
        coords = np.zeros((x.shape[1], 2), dtype=int)
        return x, types.SimpleNamespace(_xrot=coords.astype(float), coords=lambda: coords)

    monkeypatch.setattr(layout, "DeepInsightLayout", Layout)
    monkeypatch.setattr(layout, "_baseline_fit", baseline_fit)
    monkeypatch.setattr(layout, "trustworthiness", lambda distances, coords: 1.0)
    monkeypatch.setattr(layout, "real_embeddings_scores", lambda quick: {})
    result = layout.run(quick=True)
    timed = tuple(result["shape"])
    assert [who for who, _ in fits] == ["fastimg", "fastimg", "baseline"]
    warm = fits[0][1]
    assert warm[0] < timed[0] and warm[1] < timed[1]  # small: a warm-up, not a second run
    assert fits[1:] == [("fastimg", timed), ("baseline", timed)]
