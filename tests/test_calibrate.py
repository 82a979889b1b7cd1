import math

import pytest
import torch

from ferkit.engine.calibrate import balanced_score, fit_class_bias, fit_temperature, nll
from ferkit.engine.inference import adjusted_logits
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


def test_class_bias_lifts_a_rare_class_on_validation():
    # Class 1 is rare (10 %) and its logits sit 1.0 below where they should: plain argmax misses all of it.
    torch.manual_seed(0)
    targets = torch.tensor([0] * 90 + [1] * 10)
    logits = torch.zeros(100, 2)
    logits[:90, 0] = 1.5 + 0.1 * torch.randn(90)
    logits[90:, 0] = 0.4 + 0.05 * torch.randn(10)
    assert balanced_score(logits, targets) == pytest.approx((0.9, 0.5))
    prior = torch.tensor([90.0, 10.0])
    tau, bias = fit_class_bias(logits, targets, prior)
    assert tau > 0
    # the bias is -tau * log(prior), centred: class 1 gains tau * log(9) over class 0
    assert bias[1] - bias[0] == pytest.approx(tau * math.log(9), rel=1e-5)
    assert sum(bias) == pytest.approx(0.0, abs=1e-6)
    adjusted = adjusted_logits(logits, bias)
    accuracy, mean_class = balanced_score(adjusted, targets)
    assert mean_class == 1.0 and accuracy == 1.0


def test_class_bias_stays_zero_when_it_does_not_help():
    targets = torch.tensor([0, 0, 1, 1])
    logits = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    tau, bias = fit_class_bias(logits, targets, torch.tensor([3.0, 1.0]))
    assert tau == 0.0 and bias == [0.0, 0.0]


def test_adjusted_logits_adds_bias_then_divides_by_temperature():
    logits = torch.tensor([[1.0, 2.0]])
    out = adjusted_logits(logits, [0.5, -0.5], 2.0)
    torch.testing.assert_close(out, torch.tensor([[0.75, 0.75]]))
    torch.testing.assert_close(adjusted_logits(logits), logits)


def test_class_bias_keeps_accuracy_once_every_class_meets_the_floors():
    # Class 1 (20 %) is read right 12 times of 20 at tau = 0: mean per class 0.8 >= 0.65 and no class below
    # 0.5, so the most accurate tau (0) is kept. Lifting class 1 past its 8 misses (logit gap 1.0-1.5) takes
    # tau >= 1.1 and costs the 10 class-0 images that sit near the boundary: accuracy 0.92 -> 0.90, mean
    # per class 0.8 -> 0.94 (the mean of the two, the old rule, would have taken it).
    targets = torch.tensor([0] * 80 + [1] * 20)
    logits = torch.zeros(100, 2)
    logits[:10, 0] = torch.linspace(0.01, 0.1, 10)
    logits[10:80, 0] = torch.linspace(1.6, 2.0, 70)
    logits[80:92, 1] = torch.linspace(0.1, 1.0, 12)
    logits[92:, 0] = torch.linspace(1.0, 1.5, 8)
    prior = torch.tensor([80.0, 20.0])
    assert balanced_score(logits, targets) == pytest.approx((0.92, 0.8))
    tau, bias = fit_class_bias(logits, targets, prior)
    assert tau == 0.0 and bias == [0.0, 0.0]
    # with a stricter floor on every class, the adjustment that lifts class 1 is taken instead
    tau, bias = fit_class_bias(logits, targets, prior, min_class=0.85)
    assert tau >= 1.1
    assert balanced_score(adjusted_logits(logits, bias), targets) == pytest.approx((0.9, 0.9375))


def _class_bias_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Three classes, 60/30/10. Class 1 is read right 12 times of 30 at every tau (its 18 misses sit 10 logits
    # inside class 0): a floor of 0.5 per class is out of the adjustment's reach. Class 2 (rare) is read right
    # 6 times of 10; its 4 misses sit 0.5 inside class 0 and come back from tau 0.3 (0.3 * log 6 > 0.5), but
    # 12 class-0 faces 0.1 inside their own class go to class 2 from tau 0.1.
    targets = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    logits = torch.zeros(100, 3)
    logits[:48, 0] = 3.0
    logits[48:60, 0] = 0.1
    logits[60:72, 1] = 10.0
    logits[72:90, 0] = 10.0
    logits[90:96, 2] = 3.0
    logits[96:, 0] = 0.5
    return logits, targets, torch.tensor([60.0, 30.0, 10.0])


def test_class_bias_drops_a_floor_no_tau_reaches():
    # tau 0: accuracy 0.78, mean per class (1 + 0.4 + 0.6) / 3 = 0.667; tau >= 0.3: 0.70, (0.8 + 0.4 + 1) / 3 = 0.733.
    # No tau lifts class 1 to 0.5, so that floor goes and the most accurate tau with mean per class >= 0.65
    # stays: 0. (The old rule fell back to the best mean per class and gave up 8 points for it.)
    logits, targets, prior = _class_bias_case()
    assert balanced_score(logits, targets) == pytest.approx((0.78, 2 / 3))
    tau, bias = fit_class_bias(logits, targets, prior)
    assert tau == 0.0 and bias == [0.0, 0.0, 0.0]


def test_class_bias_takes_the_best_mean_per_class_when_no_floor_is_met():
    logits, targets, prior = _class_bias_case()
    tau, bias = fit_class_bias(logits, targets, prior, min_mean_class=0.9)
    assert tau == pytest.approx(0.3)
    assert balanced_score(adjusted_logits(logits, bias), targets) == pytest.approx((0.70, 2.2 / 3))
