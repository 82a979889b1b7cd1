import math

import torch

from ferkit.engine.calibrate import fit_temperature, nll
from ferkit.engine.metrics import expected_calibration_error


def _overconfident(n=4000, k=5, scale=4.0, seed=0):
    """Logits whose softmax is right ~60% of the time but far more confident than that."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, k, (n,), generator=g)
    logits = torch.randn(n, k, generator=g)
    logits[torch.arange(n), targets] += 1.0
    return logits * scale, targets


def test_temperature_scaling_lowers_nll_and_ece_on_overconfident_logits():
    logits, targets = _overconfident()
    t = fit_temperature(logits, targets)
    assert t > 2.0  # the logits were blown up by 4, so the fit must cool them down a lot
    assert nll(logits, targets, t) < nll(logits, targets) - 0.1
    before = expected_calibration_error(torch.softmax(logits, 1), targets)
    after = expected_calibration_error(torch.softmax(logits / t, 1), targets)
    assert after < before / 2


def test_temperature_is_near_one_on_calibrated_logits():
    # Labels drawn from softmax(logits) itself are calibrated by construction.
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(20000, 4, generator=g) * 2
    targets = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).squeeze(1)
    assert math.isclose(fit_temperature(logits, targets), 1.0, abs_tol=0.06)
