"""SIGReg: the sliced Epps-Pulley statistic, its directions, and its equality across gloo processes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scipy import integrate

from cxrjepa.models.projector import GlobalBatchNorm
from cxrjepa.pretrain.sigreg import SIGReg, SIGRegConfig, directions, epps_pulley, quadrature


def gaussian(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def direct_epps_pulley(x: np.ndarray, t_max: float) -> float:
    """N * integral over [-t_max, t_max] of |phi_N(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt, by adaptive quadrature."""

    def integrand(t: float) -> float:
        c, s = np.cos(t * x).mean(), np.sin(t * x).mean()
        return ((c - math.exp(-t * t / 2)) ** 2 + s * s) * math.exp(-t * t / 2)

    value, _ = integrate.quad(integrand, -t_max, t_max, limit=200, epsabs=1e-12, epsrel=1e-10)
    return len(x) * value


def test_gaussian_samples_score_near_the_null_expectation_whatever_the_batch():
    """For N(0, I) samples E[EP] = integral (1 - exp(-t^2)) w(t) dt (about 1.05 on [-3, 3]) for every N."""
    sig = SIGReg(SIGRegConfig(), seed=0)
    t, w = quadrature(17, 3.0)
    expected = float((w * (1 - torch.exp(-(t**2)))).sum())
    assert 1.0 < expected < 1.1
    for n, seed in ((256, 1), (1024, 2), (4096, 3)):
        value = float(sig(gaussian(n, 64, seed), step=seed))
        assert abs(value - expected) < 0.25, (n, value)


@pytest.mark.parametrize("kind", ["constant", "collapsed", "low_rank", "too_wide", "shifted"])
def test_non_gaussian_samples_score_far_above_and_grow_with_the_batch(kind):
    sig = SIGReg(SIGRegConfig(), seed=0)
    scores = []
    for n in (256, 1024):
        z = gaussian(n, 64, seed=n)
        if kind == "constant":
            z = torch.zeros_like(z)
        elif kind == "collapsed":  # every sample the same embedding
            z = z[:1].expand(n, -1)
        elif kind == "low_rank":  # rank 2, the same total variance as N(0, I_64)
            basis = torch.linalg.qr(gaussian(64, 2, seed=7))[0]
            z = gaussian(n, 2, seed=n + 1) @ basis.T * math.sqrt(32)
        elif kind == "too_wide":
            z = 3 * z
        else:
            z = z + 1.0
        scores.append(float(sig(z, step=0)))
    assert scores[0] > 10 and scores[1] > 3 * scores[0], scores  # O(N), where Gaussian samples stay O(1)


def test_one_direction_equals_the_epps_pulley_integral_by_adaptive_quadrature():
    """The per-direction statistic of fixed data is the Epps-Pulley integral (scipy.integrate.quad): exactly
    with a fine trapezoid grid, within 1 % with the default 17 knots."""
    rng = np.random.default_rng(3)
    z = torch.from_numpy(
        np.concatenate([rng.normal(0.3, 1.4, (40, 8)), rng.exponential(1.0, (40, 8))]).astype(np.float32)
    )
    for knots, rtol in ((4001, 1e-5), (17, 1e-2)):
        sig = SIGReg(SIGRegConfig(slices=5, knots=knots, t_max=3.0), seed=11)
        per_slice = sig.per_slice(z, step=4)
        a = directions(8, 5, seed=11, step=4)
        for j in (0, 3):
            want = direct_epps_pulley((z @ a[:, j]).double().numpy(), 3.0)
            assert float(per_slice[j]) == pytest.approx(want, rel=rtol), (knots, j)
    # the truncation at t_max = 3 leaves out little: against the integral over the whole real line
    x = (z @ a[:, 0]).double().numpy()
    whole = direct_epps_pulley(x, 40.0)
    assert float(
        SIGReg(SIGRegConfig(slices=1, knots=4001, t_max=8.0), 0).per_slice(torch.from_numpy(x)[:, None].float(), 0)[0]
    ) == pytest.approx(whole, rel=1e-4)


def test_groups_are_scored_separately_and_averaged():
    sig = SIGReg(SIGRegConfig(slices=16), seed=0)
    a, b = gaussian(100, 8, 1), 2 * gaussian(100, 8, 2)
    both = sig(torch.stack([a, b]), step=5)
    assert float(both) == pytest.approx((float(sig(a, 5)) + float(sig(b, 5))) / 2, rel=1e-6)
    assert float(sig(torch.cat([a, b])[None], 5)) != pytest.approx(float(both), rel=1e-3)


def test_directions_are_unit_and_a_function_of_seed_and_step():
    a = directions(32, 64, seed=1, step=10)
    assert a.shape == (32, 64)
    torch.testing.assert_close(a.norm(dim=0), torch.ones(64))
    assert torch.equal(a, directions(32, 64, seed=1, step=10))
    assert not torch.allclose(a, directions(32, 64, seed=1, step=11))
    assert not torch.allclose(a, directions(32, 64, seed=2, step=10))
    # they do not touch the global RNG (drop-path draws stay where the trainer seeded them)
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    directions(32, 64, seed=1, step=10)
    assert torch.equal(torch.rand(3), before)


def test_the_statistic_is_differentiable_and_pulls_towards_the_gaussian():
    z = (0.3 * gaussian(256, 16, 4)).requires_grad_(True)
    sig = SIGReg(SIGRegConfig(slices=64), seed=0)
    start = float(sig(z.detach(), 999))
    opt = torch.optim.Adam([z], lr=0.02)
    for step in range(80):
        opt.zero_grad()
        sig(z, step).backward()
        opt.step()
    assert start > 50 and float(sig(z.detach(), 999)) < 2.0  # from far off to the Gaussian's level
    torch.testing.assert_close(z.detach().std(dim=0), torch.ones(16), atol=0.1, rtol=0)


def _worker(rank: int, world: int, init: str, queue) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        z = gaussian(64, 16, seed=5) * torch.linspace(0.2, 2.0, 16)
        x = z.chunk(world)[rank].clone().requires_grad_(True)
        sig = SIGReg(SIGRegConfig(slices=32), seed=3)
        value = sig(x, step=7)
        value.backward()
        bn = GlobalBatchNorm(16)
        with torch.no_grad():
            bn.weight.copy_(torch.linspace(0.5, 1.5, 16))
            bn.bias.copy_(torch.linspace(-1, 1, 16))
        y_in = z.chunk(world)[rank].clone().requires_grad_(True)
        y = bn(y_in)
        (y.sin() * torch.arange(16.0)).mean().backward()  # this rank's share of the loss (DDP averages)
        out = (
            sig.directions(16, 7, torch.device("cpu")),
            value.detach(),
            x.grad,
            y.detach(),
            y_in.grad,
            bn.weight.grad,
        )
        queue.put((rank, *[t.numpy() for t in out]))  # numpy: pickled by value (the process ends before the read)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_draw_the_same_directions_and_compute_the_one_process_statistic(tmp_path):
    """Each rank holds half the batch: the same directions, the same statistic as one process on the whole
    batch, and -- once DDP averages gradients over ranks -- the same gradients (SIGReg and batch norm)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(
        _worker, args=(2, f"file://{tmp_path / 'rdzv'}", queue), nprocs=2, start_method="spawn", join=True
    )
    got = {r[0]: [torch.from_numpy(a) for a in r[1:]] for r in (queue.get(timeout=60) for _ in range(2))}
    assert torch.equal(got[0][0], got[1][0])  # directions drawn without communication
    z = gaussian(64, 16, seed=5) * torch.linspace(0.2, 2.0, 16)
    x = z.clone().requires_grad_(True)
    sig = SIGReg(SIGRegConfig(slices=32), seed=3)
    value = sig(x, step=7)
    value.backward()
    assert torch.equal(got[0][0], sig.directions(16, 7, torch.device("cpu")))
    assert float(got[0][1]) == pytest.approx(float(value.detach()), rel=1e-5) == float(got[1][1])
    torch.testing.assert_close(torch.cat([got[0][2], got[1][2]]) / 2, x.grad, rtol=1e-4, atol=1e-6)
    # batch norm over the global batch: torch's own BatchNorm1d on the whole batch
    bn = torch.nn.BatchNorm1d(16, track_running_stats=False)
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 1.5, 16))
        bn.bias.copy_(torch.linspace(-1, 1, 16))
    y_in = z.clone().requires_grad_(True)
    y = bn(y_in)
    (y.sin() * torch.arange(16.0)).mean().backward()
    torch.testing.assert_close(torch.cat([got[0][3], got[1][3]]), y.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.cat([got[0][4], got[1][4]]) / 2, y_in.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close((got[0][5] + got[1][5]) / 2, bn.weight.grad, rtol=1e-4, atol=1e-6)


def test_epps_pulley_of_gaussian_ecf_matches_the_closed_form():
    """With an exact N(0, 1) characteristic function the integrand vanishes: a check of the target term."""
    t, w = quadrature(17, 3.0)
    x = torch.tensor([[0.0]])  # one sample at 0: |1 - exp(-t^2/2)|^2 integrated
    want = 2 * integrate.quad(lambda s: (1 - math.exp(-s * s / 2)) ** 2 * math.exp(-s * s / 2), 0, 3)[0]
    assert float(epps_pulley(x, t, w)[0]) == pytest.approx(want, rel=1e-2)
