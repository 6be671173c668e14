from __future__ import annotations

import os

# Under pytest-xdist (`make test` runs two workers), each worker and what it starts get one
# thread: two processes whose OpenMP threads spin on the same two cores run many times slower.
# Set before torch and numpy load their thread pools.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, "1")
    for _part in ("TRAIN", "SERVICE", "RETRAIN"):
        os.environ.setdefault(f"STREAM_VAE_{_part}__TORCH_THREADS", "1")

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from stream_vae.cli.main import main
from stream_vae.storage.artifact import Artifact
from stream_vae.storage.files import load_artifact

# Tests run on the CPU with a fixed, small thread count: results must not depend on the machine.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Settings built with env={} keep their default of 2 threads, and training applies it with
    # torch.set_num_threads: a worker must not take the other worker's core.
    _set_num_threads = torch.set_num_threads
    torch.set_num_threads = lambda n: _set_num_threads(1)

TINY_TOML = """
[window]
size = 16
[model]
hidden = 16
latent = 4
[train]
epochs = 4
batch_size = 64
lr = 0.005
[scoring]
target_fpr = 0.01
"""


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """The CLI configures logging for its process (a handler on the root logger bound to this
    test's stderr, levels): each test gets the logging the one before it found."""
    root, client = logging.getLogger(), logging.getLogger("aiokafka")
    handlers, level, client_level = list(root.handlers), root.level, client.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    client.setLevel(client_level)


@dataclass(frozen=True)
class TinyModel:
    model_dir: Path
    artifact: Artifact
    train_csv: Path
    test_csv: Path
    config: Path

    @property
    def window_shape(self) -> tuple[int, int]:
        return self.artifact.vae_config.window, self.artifact.vae_config.n_features


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """A small model trained through the CLI on a generated fleet (a few seconds on 2 cores)."""
    root = tmp_path_factory.mktemp("tiny")
    cfg = root / "tiny.toml"
    cfg.write_text(TINY_TOML)
    assert (
        main(
            [
                "generate",
                "--out",
                str(root),
                "--series",
                "4",
                "--features",
                "3",
                "--steps",
                "600",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    model_dir = root / "model"
    assert (
        main(
            [
                "--config",
                str(cfg),
                "train",
                "--data",
                str(root / "train.csv"),
                "--out",
                str(model_dir),
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    return TinyModel(
        model_dir, load_artifact(model_dir), root / "train.csv", root / "test.csv", cfg
    )
