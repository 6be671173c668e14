"""Fitting the LSTM-VAE on normal windows.

Validation is split by time (the tail of every series), never at random: neighbouring windows
overlap, so a random split would leak training points into validation.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from ..core.records import RecordBatch
from ..core.windows import ReadyWindows, WindowStore
from ..model.vae import LSTMVAE, VAEConfig, vae_loss

if TYPE_CHECKING:  # annotations only: the settings schema is not needed to run
    from ..config import ModelSettings, TrainSettings

__all__ = ["EpochStats", "FitResult", "fit", "make_windows", "split_by_time"]

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]

# A latent dimension whose mean KL stays below this many nats carries (almost) no information:
# the encoder ignores it. All dims like this = posterior collapse.
COLLAPSE_NATS = 0.01


@dataclass(frozen=True, slots=True)
class EpochStats:
    epoch: int
    train_loss: float
    train_recon: float
    train_kl: float  # nats per window
    val_loss: float
    val_recon: float
    val_kl: float
    beta: float  # annealed β at the end of the epoch


@dataclass(slots=True)
class FitResult:
    model: LSTMVAE
    history: list[EpochStats]
    best_epoch: int
    stopped_early: bool
    kl_per_dim: list[float]  # nats, on validation windows, best model
    collapsed_dims: list[int] = field(default_factory=list)

    @property
    def collapsed(self) -> bool:
        return len(self.collapsed_dims) == len(self.kl_per_dim)

    def metrics(self) -> dict[str, Any]:
        best = self.history[self.best_epoch - 1]
        return {
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.history),
            "stopped_early": self.stopped_early,
            "val_loss": best.val_loss,
            "val_recon": best.val_recon,
            "val_kl": best.val_kl,
            "kl_per_dim": self.kl_per_dim,
            "collapsed_dims": self.collapsed_dims,
            "posterior_collapse": self.collapsed,
            # every epoch's figures (EpochStats' fields), kept in the manifest: the loss curves
            # of any model, without training it again
            "history": [asdict(h) for h in self.history],
        }


def split_by_time(batch: RecordBatch, tail_fraction: float) -> tuple[RecordBatch, RecordBatch]:
    """Split every series at its own time quantile: (head, tail), arrival order kept."""
    sids = np.asarray(batch.series_ids, dtype=object)
    in_tail = np.zeros(len(batch), dtype=bool)
    for sid in dict.fromkeys(batch.series_ids):
        rows = np.flatnonzero(sids == sid)
        n_tail = math.floor(len(rows) * tail_fraction)
        if n_tail:
            order = rows[np.argsort(batch.ts[rows], kind="stable")]
            in_tail[order[len(rows) - n_tail :]] = True
    return _take(batch, ~in_tail), _take(batch, in_tail)


def _take(batch: RecordBatch, mask: npt.NDArray[np.bool_]) -> RecordBatch:
    idx = np.flatnonzero(mask)
    return RecordBatch(tuple(batch.series_ids[i] for i in idx), batch.ts[idx], batch.values[idx])


def make_windows(batch: RecordBatch, window: int, stride: int = 1, **store_kw: Any) -> ReadyWindows:
    """Windows of a batch through the same :class:`WindowStore` the service uses."""
    store = WindowStore(window, batch.values.shape[1], stride=stride, **store_kw)
    return store.push_many(batch)


def _subsample(x: F32, cap: int, rng: np.random.Generator) -> F32:
    if len(x) <= cap:
        return x
    return x[np.sort(rng.choice(len(x), size=cap, replace=False))]


def fit(
    train: F32,
    val: F32,
    model_settings: ModelSettings,
    settings: TrainSettings,
    *,
    init_state: dict[str, torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> FitResult:
    """Fit an :class:`LSTMVAE` on scaled normal windows ``train`` (n, W, d); early-stop on ``val``.

    ``init_state`` warm-starts from an existing model's ``state_dict`` (same architecture).
    """
    if len(train) == 0 or len(val) == 0:
        raise ValueError(
            f"fit needs training and validation windows (got {len(train)}, {len(val)})"
        )
    torch.set_num_threads(settings.torch_threads)
    gen = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)  # LSTM init and the reparameterisation noise
    rng = np.random.default_rng(settings.seed)
    train = _subsample(train, settings.max_windows, rng)
    cfg = VAEConfig(train.shape[2], train.shape[1], **model_settings.model_dump())
    model = LSTMVAE(cfg).to(device)
    if init_state is not None:
        model.load_state_dict(init_state)
    elif model.pseudo is not None:  # the VampPrior starts at the posteriors of real windows
        idx = torch.randint(len(train), (cfg.n_pseudo,), generator=gen).numpy()
        with torch.no_grad():
            model.pseudo.copy_(torch.from_numpy(train[idx]).to(device))
    log_prior = model.log_prior if model.pseudo is not None else None
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    x_train = torch.from_numpy(np.ascontiguousarray(train))
    x_val = torch.from_numpy(np.ascontiguousarray(val)).to(device)
    # Warm starts skip the β ramp: the encoder is already informative.
    anneal = 0 if init_state is not None else settings.kl_anneal_steps
    history: list[EpochStats] = []
    best, best_state, best_epoch, stale, step = math.inf, _copy_state(model), 0, 0, 0
    bar = _progress(settings.epochs, progress)
    for epoch in range(1, settings.epochs + 1):
        model.train()
        sums = np.zeros(3)
        perm = torch.randperm(len(x_train), generator=gen)
        for i in range(0, len(perm), settings.batch_size):
            xb = x_train[perm[i : i + settings.batch_size]].to(device)  # (b, W, d)
            if settings.noise_std > 0:
                xb_in = xb + settings.noise_std * torch.randn(xb.shape, generator=gen).to(device)
            else:
                xb_in = xb
            beta = settings.beta * min(1.0, step / anneal) if anneal else settings.beta
            out = model(xb_in)
            loss = vae_loss(out, xb, beta=beta, free_bits=settings.free_bits, log_prior=log_prior)
            opt.zero_grad(set_to_none=True)
            loss.total.backward()  # type: ignore[no-untyped-call]
            # LSTMs occasionally spike gradients on rare windows; clipping keeps Adam stable.
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            step += 1
            sums += np.array([loss.total.item(), loss.recon.item(), loss.kl.item()]) * len(xb)
        tr = sums / len(x_train)
        # Early stopping compares epochs on the loss at the final β: with the annealed β the
        # validation loss rises while β ramps up, and training would stop too early.
        vl, vr, vk, _ = _evaluate(model, x_val, settings.beta, settings)
        history.append(
            EpochStats(epoch, float(tr[0]), float(tr[1]), float(tr[2]), vl, vr, vk, beta)
        )
        bar(epoch, tr[0], tr[2], vl)
        if vl < best - 1e-5:
            best, best_state, best_epoch, stale = vl, _copy_state(model), epoch, 0
        else:
            stale += 1
            if stale >= settings.patience:
                break
    bar(None, 0.0, 0.0, 0.0)
    model.load_state_dict(best_state)
    kl_dims = _evaluate(model, x_val, settings.beta, settings)[3]
    collapsed = [i for i, v in enumerate(kl_dims) if v < COLLAPSE_NATS]
    if len(collapsed) == len(kl_dims):
        log.warning(
            "posterior collapse: every latent dim has KL < %.3f nats; the latent "
            "score carries no information (lower beta or raise free_bits)",
            COLLAPSE_NATS,
        )
    elif collapsed:
        log.info(
            "%d of %d latent dims inactive (KL < %.3f nats)",
            len(collapsed),
            len(kl_dims),
            COLLAPSE_NATS,
        )
    stopped = len(history) < settings.epochs
    return FitResult(model.eval(), history, best_epoch, stopped, kl_dims, collapsed)


@torch.no_grad()
def _evaluate(
    model: LSTMVAE, x: torch.Tensor, beta: float, settings: TrainSettings
) -> tuple[float, float, float, list[float]]:
    model.eval()
    sums, kl_dims = np.zeros(3), torch.zeros(model.config.latent)
    for i in range(0, len(x), 1024):
        xb = x[i : i + 1024]
        out = model(xb, sample=False)
        log_prior = model.log_prior if model.pseudo is not None else None
        loss = vae_loss(out, xb, beta=beta, free_bits=settings.free_bits, log_prior=log_prior)
        sums += np.array([loss.total.item(), loss.recon.item(), loss.kl.item()]) * len(xb)
        kl_dims += loss.kl_per_dim.cpu() * len(xb)
    s = sums / len(x)
    return float(s[0]), float(s[1]), float(s[2]), (kl_dims / len(x)).tolist()


def _copy_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _progress(total: int, enabled: bool) -> Any:
    """A tqdm bar showing loss and KL per epoch (a no-op when disabled)."""
    if not enabled:
        return lambda *a: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="training", unit="epoch", leave=True)

    def update(epoch: int | None, loss: float, kl: float, val: float) -> None:
        if epoch is None:
            bar.close()
            return
        bar.set_postfix(loss=f"{loss:.4f}", kl=f"{kl:.3f}", val=f"{val:.4f}")
        bar.update(1)

    return update
