import pytest
import torch

from ferkit.losses import CenterLoss, IslandLoss, create_loss, list_losses, objective, register_loss


def _three_centers(loss):
    with torch.no_grad():
        loss.centers.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    return loss


FEATURES = torch.tensor([[1.0, 1.0], [0.0, 3.0]])
TARGETS = torch.tensor([0, 1])


def test_center_loss_by_hand():
    loss = _three_centers(CenterLoss(3, 2))
    # ||(1,1)-(1,0)||^2 = 1, ||(0,3)-(0,1)||^2 = 4 -> 1/2 * mean(1, 4) = 1.25
    assert loss(FEATURES, TARGETS).item() == pytest.approx(1.25)


def test_island_loss_by_hand():
    loss = _three_centers(IslandLoss(3, 2, lambda1=0.5))
    # cos(c0,c1) = 0, cos(c0,c2) = -1, cos(c1,c2) = 0 -> (cos+1) = 1, 0, 1; ordered pairs count twice: 4
    assert loss.pair_term().item() == pytest.approx(4.0)
    assert loss(FEATURES, TARGETS).item() == pytest.approx(1.25 + 0.5 * 4.0)


def test_island_pair_term_lowest_for_opposite_centers():
    loss = IslandLoss(2, 3)
    with torch.no_grad():
        loss.centers.copy_(torch.tensor([[1.0, 0, 0], [-2.0, 0, 0]]))
    assert loss.pair_term().item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        loss.centers.copy_(torch.tensor([[1.0, 0, 0], [3.0, 0, 0]]))
    assert loss.pair_term().item() == pytest.approx(4.0)


@pytest.mark.parametrize("cls", [CenterLoss, IslandLoss])
def test_gradcheck_float64(cls):
    torch.manual_seed(0)
    loss = cls(3, 4).double()
    features = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    centers = loss.centers.detach().clone().requires_grad_(True)
    targets = torch.tensor([0, 1, 2, 1, 0])

    def value(feats, cents):
        return torch.func.functional_call(loss, {"centers": cents}, (feats, targets))

    assert torch.autograd.gradcheck(value, (features, centers))


def test_objective_combines_softmax_and_aux():
    torch.manual_seed(0)
    crit = create_loss("island", num_classes=3, feat_dim=2, lam=0.5, lambda1=0.5)
    _three_centers(crit.aux)
    logits = torch.randn(2, 3)
    parts = crit(FEATURES, logits, TARGETS)
    ce = torch.nn.functional.cross_entropy(logits, TARGETS)
    torch.testing.assert_close(parts.softmax, ce)
    assert parts.aux.item() == pytest.approx(3.25)
    assert parts.total.item() == pytest.approx(ce.item() + 0.5 * 3.25)


def test_softmax_objective_has_no_centers_and_smoothing_works():
    crit = create_loss("softmax", label_smoothing=0.1)
    assert crit.aux is None and len(list(crit.parameters())) == 0
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    parts = crit(torch.zeros(1, 512), logits, torch.tensor([0]))
    logp = torch.log_softmax(logits, 1)[0]
    expected = -(0.9 + 0.1 / 3) * logp[0] - (0.1 / 3) * (logp[1] + logp[2])
    assert parts.total.item() == pytest.approx(expected.item(), rel=1e-5)


def test_center_gradient_pulls_centers_to_features():
    crit = create_loss("center", num_classes=3, feat_dim=2)
    _three_centers(crit.aux)
    crit(FEATURES, torch.zeros(2, 3), TARGETS).total.backward()
    # d/dc0 of 0.5*lam*mean ||x-c||^2 = -lam * (x0 - c0) / 2 = -0.5*(0,1)/2
    torch.testing.assert_close(crit.aux.centers.grad[0], torch.tensor([0.0, -0.25]))
    torch.testing.assert_close(crit.aux.centers.grad[2], torch.tensor([0.0, 0.0]))


def test_unknown_loss():
    assert list_losses()[:3] == ["softmax", "center", "island"]
    with pytest.raises(ValueError, match=f"unknown loss 'triplet'; valid: {', '.join(list_losses())}$"):
        create_loss("triplet")


@pytest.mark.parametrize("name", list_losses())
def test_every_registered_loss_builds_and_gives_finite_values_and_gradients(name):
    torch.manual_seed(0)
    crit = create_loss(name, num_classes=3, feat_dim=4, lam=0.5, lambda1=0.5)
    features = torch.randn(6, 4, requires_grad=True)
    logits = torch.randn(6, 3, requires_grad=True)
    parts = crit(features, logits, torch.tensor([0, 1, 2, 0, 1, 2]))
    assert all(torch.isfinite(t) and t.ndim == 0 for t in parts)
    assert parts.total.item() == pytest.approx(parts.softmax.item() + 0.5 * parts.aux.item(), rel=1e-5)
    parts.total.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # an auxiliary term acts on the features; softmax alone does not see them
    assert (features.grad is not None and features.grad.abs().sum() > 0) == (crit.aux is not None)


def test_a_registered_loss_is_built_by_name_with_the_shared_options(monkeypatch):
    monkeypatch.setattr(objective, "_LOSSES", dict(objective._LOSSES))
    calls = []

    @register_loss("center_copy")
    def build(num_classes, feat_dim, lambda1, normalize):
        calls.append((num_classes, feat_dim, lambda1, normalize))
        return CenterLoss(num_classes, feat_dim, normalize)

    crit = create_loss("center_copy", num_classes=3, feat_dim=2, lam=2.0, lambda1=7.0, normalize=True)
    assert calls == [(3, 2, 7.0, True)] and list_losses()[-1] == "center_copy"
    assert isinstance(crit.aux, CenterLoss) and crit.lam == 2.0


def test_normalized_center_loss_by_hand():
    loss = _three_centers(CenterLoss(3, 2, normalize=True))
    # unit features (1,1)/sqrt2 and (0,1) against centers (1,0) and (0,1): 1 - cos = 1 - 1/sqrt2 and 0
    expected = (1 - 2**-0.5 + 0.0) / 2
    assert loss(FEATURES, TARGETS).item() == pytest.approx(expected)
    # scaling the features changes nothing: shrinking them cannot lower the loss
    assert loss(FEATURES * 0.01, TARGETS).item() == pytest.approx(expected)
    raw = _three_centers(CenterLoss(3, 2))
    assert raw(FEATURES * 0.01, TARGETS).item() < raw(FEATURES, TARGETS).item()


def test_create_loss_passes_normalize():
    assert create_loss("island", normalize=True).aux.normalize
    assert not create_loss("center").aux.normalize


def test_balanced_weights_by_hand() -> None:
    from ferkit.losses.objective import balanced_weights

    # 10 images: 6, 3, 1 and none of the fourth class -> 10 / (3 x count)
    assert torch.allclose(balanced_weights(torch.tensor([6, 3, 1, 0])), torch.tensor([10 / 18, 10 / 9, 10 / 3, 0.0]))
    assert torch.equal(balanced_weights(torch.tensor([4, 4])), torch.ones(2))


def test_class_weights_weigh_each_target_class_cross_entropy() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    targets = torch.tensor([0, 1, 1])
    nll = -torch.log_softmax(logits, dim=1)[torch.arange(3), targets]
    w = torch.tensor([3.0, 1.0])
    loss = create_loss("softmax", 2, 4, class_weights=w)(torch.zeros(3, 4), logits, targets)
    # PyTorch's weighted mean: sum of w_y x nll over the sum of w_y
    assert torch.allclose(loss.total, (3 * nll[0] + nll[1] + nll[2]) / 5)
    plain = create_loss("softmax", 2, 4)(torch.zeros(3, 4), logits, targets)
    assert torch.allclose(plain.total, nll.mean())
