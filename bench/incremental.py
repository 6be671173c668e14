"""An incremental encoder: the LSTM state carried across points instead of each window encoded
from scratch, its cost per point and its effect on the scores.

    python bench/incremental.py [--asd ../shared/data/asd] [--servers omi-1 ...] [--seeds 0]
                                [--batch 256] [--repeats 7] [--out bench/results/incremental.md]

Every point is encoded W times at stride 1, once in each window that holds it. Carrying the
encoder's state along the series does each point once. The state then covers more than the
window, since an LSTM's state holds its whole past, so it is re-anchored: started from zero at
an anchor, it reads every point from there on. Variants (window ending at point t):

full       the product: each window encoded from zero over its own W points.
anchor2    two chains, each restarted every 2W points and offset by W: window t takes the chain
           started at a = W·⌊(t − W + 1) / W⌋, which has read between W and 2W − 1 points (the
           window and up to W − 1 before it). Two encoder steps per point.
anchor1    one chain restarted every W points (a = W·⌊t / W⌋): it has read between 1 and W
           points, the window's newest ones. One encoder step per point.
carried    never re-anchored: the state has read the whole series. One encoder step per point.

The decoder is unchanged: it maps the code to the window's W points, so it still runs W steps
per window; the encoder's share of the forward pass is the most this can save.

cost     the bare model (torch, eager, float32) at --batch windows: the full forward pass
         against the incremental one (one encoder step for each chain of the batch's series,
         then the decoder), windows/s as the median of --repeats runs, and their ratio.
quality  the ASD servers under bench/configs/asd.toml, trained once per server and seed (the
         full encoder, as the product trains), then the test month scored twice through the
         product's path (``score_product``): with the full encoder, and with each variant's
         codes. VUS-PR of the product and of its reconstruction and latent components, and how
         far the smoothed score moved (median and 99th percentile of |Δ| over the threshold).

Only public tools (time.perf_counter).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

import stream_vae.evaluation.detectors as detectors
from stream_vae.config import Settings, load_settings
from stream_vae.evaluation.datasets import read_smd
from stream_vae.evaluation.detectors import score_product, train_product
from stream_vae.evaluation.runner import series_metrics
from stream_vae.model.backends import Outputs
from stream_vae.model.vae import LSTMVAE, VAEConfig

ROOT = Path(__file__).resolve().parent.parent
F32 = npt.NDArray[np.float32]
VARIANTS = ("anchor2", "anchor1", "carried")


def anchors(variant: str, t: npt.NDArray[np.int64], w: int) -> npt.NDArray[np.int64]:
    """The point each window's chain started at, for windows ending at points ``t``."""
    if variant == "anchor2":
        return w * ((t - w + 1) // w)
    if variant == "anchor1":
        return w * (t // w)
    if variant == "carried":
        return np.zeros_like(t)
    raise ValueError(variant)


class IncrementalCodes:
    """A backend (scaled windows → outputs) for one series whose windows arrive in order at
    stride 1: the codes come from the encoder run from each window's anchor over the series'
    points, the reconstruction from the unchanged decoder."""

    def __init__(self, model: LSTMVAE, variant: str) -> None:
        self.model = model.eval()
        self.variant = variant
        self.w = model.config.window
        self.points: F32 | None = None  # (n, d): every scaled point seen
        self.last: F32 | None = None  # the previous call's newest window

    def __call__(self, x: F32) -> Outputs:
        w = self.w
        if self.points is None:
            start = w - 1
            self.points = np.concatenate([x[0], x[1:, -1]])
        else:
            assert self.last is not None
            if not np.array_equal(x[0, :-1], self.last[1:]):
                raise ValueError("windows are not consecutive: the bench needs stride 1, no gaps")
            start = len(self.points)
            self.points = np.concatenate([self.points, x[:, -1]])
        self.last = x[-1].copy()
        t = np.arange(start, start + len(x))
        a = anchors(self.variant, t, w)
        h = np.empty((len(x), self.model.config.hidden), np.float32)
        pts = torch.from_numpy(self.points)
        with torch.inference_mode():
            for anchor in np.unique(a):
                rows = np.flatnonzero(a == anchor)
                end = int(t[rows[-1]])
                out, _ = self.model.encoder(pts[anchor : end + 1].unsqueeze(0))  # (1, L, H)
                h[rows] = out[0, t[rows] - anchor].numpy()
            last = torch.from_numpy(h)
            mu = self.model.to_mu(last)
            logvar = self.model.to_logvar(last).clamp(-12.0, 8.0)
            recon, recon_lv = self.model.decode(mu)
        return (
            recon.numpy(),
            None if recon_lv is None else recon_lv.numpy(),
            mu.numpy(),
            logvar.numpy(),
        )


@contextmanager
def codes_from(variant: str) -> Iterator[None]:
    """The product's scoring path (``score_product``) with ``variant``'s codes."""
    original: Callable[..., Any] = detectors._live

    def live(art: Any, settings: Settings) -> Any:
        lm = original(art, settings)
        lm.detector.backend = IncrementalCodes(art.model(), variant)
        return lm

    detectors._live = live  # type: ignore[assignment]
    try:
        yield
    finally:
        detectors._live = original  # type: ignore[assignment]


def cost(batch: int, repeats: int, w: int, d: int, hidden: int, latent: int) -> dict[str, float]:
    """Windows/s of the full forward pass and of the incremental one, at ``batch`` windows (one
    per series), median of ``repeats`` timed runs of at least 0.5 s."""
    torch.manual_seed(0)
    model = LSTMVAE(VAEConfig(n_features=d, window=w, hidden=hidden, latent=latent)).eval()
    x = torch.randn(batch, w, d)
    point = torch.randn(2 * batch, 1, d)
    state = (torch.zeros(1, 2 * batch, hidden), torch.zeros(1, 2 * batch, hidden))

    def full() -> None:
        model(x)

    def step(chains: int) -> Callable[[], None]:
        def run() -> None:
            n = chains * batch
            out, _ = model.encoder(point[:n], (state[0][:, :n], state[1][:, :n]))
            h = out[:batch, 0]  # the chain each window takes
            model.decode(model.to_mu(h))

        return run

    def decoder_only() -> None:
        model.decode(torch.zeros(batch, latent))

    def rate(fn: Callable[[], None]) -> float:
        runs = []
        with torch.inference_mode():
            fn()
            for _ in range(repeats):
                n, t0 = 0, time.perf_counter()
                while (dt := time.perf_counter() - t0) < 0.5:
                    fn()
                    n += 1
                runs.append(n * batch / dt)
        return statistics.median(runs)

    out = {
        "full": rate(full),
        "anchor2": rate(step(2)),
        "anchor1": rate(step(1)),
        "decoder": rate(decoder_only),
    }
    print("cost, windows/s:", {k: round(v) for k, v in out.items()}, flush=True)
    return out


def quality(
    settings: Settings, seeds: list[int], asd: Path, names: list[str] | None
) -> dict[str, dict[str, list[float]]]:
    """Per variant: per server and seed, the product's VUS-PR and its components', and the
    smoothed score's change against the full encoder."""
    res: dict[str, dict[str, list[float]]] = {v: {} for v in ("full", *VARIANTS)}
    for seed in seeds:
        run = settings.model_copy(
            update={"train": settings.train.model_copy(update={"seed": seed})}
        )
        for series in read_smd(asd, names):
            t0 = time.perf_counter()
            art = train_product(series, run, seed)
            w = run.window.size
            thr = art.calibration.threshold
            base = score_product(series, art, run)
            rows = {"full": base}
            for v in VARIANTS:
                with codes_from(v):
                    rows[v] = score_product(series, art, run)
            for v, out in rows.items():
                r = res[v]
                for name, key in (
                    ("stream-vae", "hybrid"),
                    ("vae-recon", "recon"),
                    ("vae-latent", "latent"),
                ):
                    m = series_metrics(out[name], series.labels, series.interpretation, w)
                    r.setdefault(key, []).append(m["vus_pr"])
                delta = np.abs(out["stream-vae"].scores - base["stream-vae"].scores) / thr
                r.setdefault("delta_median", []).append(float(np.median(delta)))
                r.setdefault("delta_p99", []).append(float(np.quantile(delta, 0.99)))
            print(
                f"seed {seed} {series.name} ({time.perf_counter() - t0:.0f} s): VUS-PR "
                + ", ".join(f"{v} {res[v]['hybrid'][-1]:.3f}" for v in rows)
                + "; |Δ|/thr p99 "
                + ", ".join(f"{v} {res[v]['delta_p99'][-1]:.2f}" for v in VARIANTS),
                flush=True,
            )
    return res


def mean(vals: list[float]) -> str:
    return f"{statistics.fmean(vals):.3f}" if vals else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--asd", type=Path, default=ROOT.parent / "shared" / "data" / "asd")
    ap.add_argument("--servers", nargs="+", help="only these ASD servers")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-asd", action="store_true", help="the cost part only")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "incremental.md")
    args = ap.parse_args()

    settings = load_settings(ROOT / "bench" / "configs" / "asd.toml")
    w, hidden, latent = settings.window.size, settings.model.hidden, settings.model.latent
    c = cost(args.batch, args.repeats, w, 8, hidden, latent)
    lines = [
        "# An incremental encoder: cost and effect on the scores",
        "",
        f"`python bench/incremental.py` (W = {w}, d = 8, hidden {hidden}, latent {latent}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, eager float32, batch "
        f"{args.batch}; median of {args.repeats} runs).",
        "",
        "| forward pass | windows/s | vs full |",
        "| --- | ---: | ---: |",
    ]
    for k, label in (
        ("full", "full: encoder over W points, decoder over W"),
        ("anchor2", "incremental, two chains: 2 encoder steps, decoder over W"),
        ("anchor1", "incremental, one chain: 1 encoder step, decoder over W"),
        ("decoder", "the decoder alone (the bound of any incremental encoder)"),
    ):
        lines.append(f"| {label} | {c[k]:,.0f} | {c[k] / c['full']:.2f}× |")
    if not args.no_asd and args.asd.is_dir():
        res = quality(settings, args.seeds, args.asd, args.servers)
        n = len(res["full"]["hybrid"])
        lines += [
            "",
            f"ASD under bench/configs/asd.toml, seeds {args.seeds}, "
            f"{len(args.servers or []) or 'all'} servers ({n} server-seeds): mean VUS-PR, and "
            "the smoothed score's change against the full encoder over the threshold "
            "(mean over server-seeds of each one's median and 99th percentile).",
            "",
            "| encoder | product VUS-PR | reconstruction alone | latent alone | |Δ| median | "
            "|Δ| p99 |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for v, r in res.items():
            lines.append(
                f"| {v} | {mean(r['hybrid'])} | {mean(r['recon'])} | {mean(r['latent'])} | "
                f"{mean(r['delta_median'])} | {mean(r['delta_p99'])} |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
