"""The embedding model is the packaged one unless `embeddings.model_path` names another folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evolvd import embeddings


def test_a_configured_model_folder_is_the_one_loaded(tmp_path: Path) -> None:
    copy = tmp_path / "my-minilm"
    shutil.copytree(embeddings.model_path(), copy)
    # In a process of its own: the test session's process may have loaded the packaged model already.
    code = (
        "from pathlib import Path; from evolvd import embeddings\n"
        f"embeddings.configure(Path({str(copy)!r}))\n"
        "vectors = embeddings.embed(['a prompt', 'another'])\n"
        "print(embeddings.model_path(), vectors.shape)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[0] == str(copy) and "(2, 384)" in result.stdout


def test_a_folder_without_a_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a sentence-transformers model folder"):
        embeddings.configure(tmp_path)
    embeddings.configure(None)  # back to the packaged model
    assert embeddings.model_path().name == "model"
