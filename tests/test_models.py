import pytest
import torch

from ferkit.config import load_config
from ferkit.models import (CBAM, ChannelGate, ResNet, SEModule, SpatialGate, create_attention, create_model,
                           list_models)
from ferkit.models.attention import ATTENTION_LAYERS, ECA, register_attention
from ferkit.models.resnet import STEMS, BasicBlock, make_stem


def _set_mlp(gate: ChannelGate, w1, b1, w2, b2):
    with torch.no_grad():
        gate.mlp[0].weight.copy_(w1)
        gate.mlp[0].bias.copy_(b1)
        gate.mlp[2].weight.copy_(w2)
        gate.mlp[2].bias.copy_(b2)


def test_cbam_channel_gate_is_sigmoid_of_shared_mlp_on_avg_plus_max():
    torch.manual_seed(0)
    c, hidden = 4, 2
    w1, b1 = torch.randn(hidden, c), torch.randn(hidden)
    w2, b2 = torch.randn(c, hidden), torch.randn(c)
    gate = ChannelGate(c, reduction=2)
    _set_mlp(gate, w1, b1, w2, b2)
    x = torch.randn(3, c, 5, 6)

    def mlp(v):  # v: N x C, written out as matrix products
        return torch.relu(v @ w1.T + b1) @ w2.T + b2

    expected = torch.sigmoid(mlp(x.mean(dim=(2, 3))) + mlp(x.amax(dim=(2, 3))))
    torch.testing.assert_close(gate.gate(x).view(3, c), expected)
    torch.testing.assert_close(gate(x), x * expected.view(3, c, 1, 1))


def test_se_uses_average_pool_only():
    torch.manual_seed(1)
    w1, b1, w2, b2 = torch.randn(2, 4), torch.randn(2), torch.randn(4, 2), torch.randn(4)
    se = SEModule(4, reduction=2)
    _set_mlp(se, w1, b1, w2, b2)
    x = torch.randn(2, 4, 3, 3)
    expected = torch.sigmoid(torch.relu(x.mean(dim=(2, 3)) @ w1.T + b1) @ w2.T + b2)
    torch.testing.assert_close(se.gate(x).view(2, 4), expected)


def test_spatial_gate_is_sigmoid_of_7x7_conv_on_max_and_mean():
    gate = SpatialGate(7)
    with torch.no_grad():
        gate.conv.weight.zero_()
        gate.conv.weight[0, 0, 3, 3] = 1.0   # centre tap on the channel-max map
        gate.conv.weight[0, 1, 3, 3] = 2.0   # centre tap on the channel-mean map
        gate.conv.bias.fill_(0.5)
    x = torch.randn(2, 5, 8, 8)
    expected = torch.sigmoid(x.amax(dim=1, keepdim=True) + 2 * x.mean(dim=1, keepdim=True) + 0.5)
    torch.testing.assert_close(gate.gate(x), expected)
    # A tap off the centre reads the neighbouring pixel (zero padding at the border).
    with torch.no_grad():
        gate.conv.weight.zero_()
        gate.conv.weight[0, 0, 3, 4] = 1.0
        gate.conv.bias.zero_()
    shifted = torch.zeros(2, 1, 8, 8)
    shifted[..., :, :-1] = x.amax(dim=1, keepdim=True)[..., :, 1:]
    torch.testing.assert_close(gate.gate(x), torch.sigmoid(shifted))


def test_cbam_applies_channel_then_spatial():
    torch.manual_seed(2)
    cbam = CBAM(8, reduction=4)
    x = torch.randn(2, 8, 6, 6)
    after_channel = cbam.channel(x)
    torch.testing.assert_close(cbam(x), after_channel * cbam.spatial.gate(after_channel))
    no_spatial = CBAM(8, reduction=4, no_spatial=True)
    no_spatial.channel.load_state_dict(cbam.channel.state_dict())
    torch.testing.assert_close(no_spatial(x), after_channel)


def test_channel_gate_reads_checkpoints_with_conv_mlp_weights():
    gate = ChannelGate(8, reduction=4)
    old = {k: (v.view(*v.shape, 1, 1) if k.endswith("weight") else v) for k, v in gate.state_dict().items()}
    fresh = ChannelGate(8, reduction=4)
    fresh.load_state_dict(old)
    x = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(fresh(x), gate(x))


def test_unknown_attention_lists_valid_names():
    with pytest.raises(ValueError, match="none, se, cbam, eca"):
        create_attention("bam", 64)


@pytest.mark.parametrize("channels, kernel", [(8, 3), (64, 3), (128, 5), (256, 5), (512, 5), (2048, 7)])
def test_eca_kernel_grows_with_log2_of_the_channels(channels, kernel):
    # k = |(log2 C + 1) / 2|, made odd upwards, at least 3: for 512 channels (9 + 1) / 2 = 5
    assert create_attention("eca", channels).conv.kernel_size == (kernel,)


def test_eca_gate_is_a_conv_across_neighbouring_channels_of_the_average_pool():
    eca = create_attention("eca", 4, kernel_size=3)
    with torch.no_grad():
        eca.conv.weight.copy_(torch.tensor([[[1.0, 0.0, -1.0]]]))
    x = torch.arange(4.0).view(1, 4, 1, 1).expand(1, 4, 2, 2).contiguous()  # channel means 0, 1, 2, 3
    # tap -1 on the next channel, +1 on the previous (zero padding): 0-1, 0-2, 1-3, 2-0
    expected = torch.sigmoid(torch.tensor([-1.0, -2.0, -2.0, 2.0])).view(1, 4, 1, 1)
    torch.testing.assert_close(eca.gate(x), expected)
    torch.testing.assert_close(eca(x), x * expected)


def test_layers_get_only_the_options_they_take():
    # the blocks pass reduction to every layer; ECA has no MLP and takes none, SE and CBAM do
    assert create_attention("se", 64, reduction=8).mlp[0].out_features == 8
    assert isinstance(create_attention("eca", 64, reduction=8), ECA)
    assert isinstance(create_attention("none", 64, reduction=8)(torch.ones(1)), torch.Tensor)


def test_a_layer_registered_in_its_own_place_is_usable_by_name(monkeypatch):
    monkeypatch.setitem(ATTENTION_LAYERS, "half", ATTENTION_LAYERS["none"])  # the registry is restored after

    @register_attention("half", "halves the branch")
    class Half(torch.nn.Module):
        def __init__(self, channels: int):
            super().__init__()

        def forward(self, x):
            return x / 2

    block = BasicBlock(8, 8, attention="half", reduction=4)
    assert isinstance(block.attn, Half)
    assert load_config(None, ["attention=half"]).attention == "half"  # configs read the registry too


def test_attention_sits_on_residual_branch_before_addition():
    # A spatial gate driven to 0 silences the residual branch: the block reduces to relu(x).
    block = BasicBlock(8, 8, attention="cbam", reduction=4).eval()
    with torch.no_grad():
        block.attn.spatial.conv.weight.zero_()
        block.attn.spatial.conv.bias.fill_(-100.0)
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(block(x), torch.relu(x))


def test_plain_resnet18_parameter_count():
    model = create_model("resnet18", attention="none", in_chans=1, num_classes=7, stem="cifar")
    assert sum(p.numel() for p in model.parameters()) == 11_171_271  # 11.17 M


def test_resnet_tiny_parameter_count_by_hand():
    def block(cin: int, cout: int) -> int:
        """Two 3x3 convs and two BNs (weight + bias), plus a 1x1 conv + BN shortcut where the width changes."""
        shortcut = cin * cout + 2 * cout if cin != cout else 0
        return 9 * cin * cout + 9 * cout * cout + 2 * 2 * cout + shortcut

    stem = 9 * 1 * 8 + 2 * 8  # 3x3 conv from 1 channel to 8, BN
    head = 64 * 7 + 7
    expected = stem + block(8, 8) + block(8, 16) + block(16, 32) + block(32, 64) + head
    model = create_model("resnet_tiny", attention="none", in_chans=1, num_classes=7, stem="cifar")
    assert sum(p.numel() for p in model.parameters()) == expected == 77_663  # 1/144 of ResNet-18


def test_resnet_tiny_has_one_narrow_block_per_stage_and_64_d_features():
    model = create_model("resnet_tiny", stem="cifar", num_classes=5).eval()
    assert [len(stage) for stage in model.stages] == [1, 1, 1, 1]
    assert [stage[0].conv2.out_channels for stage in model.stages] == [8, 16, 32, 64]
    x = torch.randn(2, 1, 48, 48)
    features, logits = model(x, return_features=True)
    assert model.num_features == 64 and model.forward_maps(x).shape == (2, 64, 6, 6)
    assert features.shape == (2, 64) and logits.shape == (2, 5)


@pytest.mark.parametrize("attention", ["se", "cbam"])
def test_channel_mlp_of_an_8_channel_stage_keeps_one_hidden_unit(attention):
    # reduction 16 on resnet_tiny's 8 channels: 8 // 16 = 0 hidden units would cut the gate off its input
    model = create_model("resnet_tiny", attention=attention, stem="imagenet", reduction=16)
    gate = model.stages[0][0].attn
    mlp = gate.mlp if attention == "se" else gate.channel.mlp
    assert (mlp[0].in_features, mlp[0].out_features, mlp[2].out_features) == (8, 1, 8)


def test_widths_default_to_resnet18s_and_are_checked():
    # the layout saved models (the shipped one included) were written with: 64-128-256-512
    model = create_model("resnet18")
    assert [stage[-1].conv2.out_channels for stage in model.stages] == [64, 128, 256, 512]
    assert model.state_dict()["stages.1.0.shortcut.0.weight"].shape == (128, 64, 1, 1)
    default = ResNet((2, 2, 2, 2)).state_dict()
    explicit = ResNet((2, 2, 2, 2), widths=(64, 128, 256, 512)).state_dict()
    assert {k: v.shape for k, v in default.items()} == {k: v.shape for k, v in explicit.items()}
    with pytest.raises(ValueError, match=r"widths must be 4 positive channel counts, one per stage; got \(8, 16, 32\)"):
        ResNet((1, 1, 1, 1), widths=(8, 16, 32))


def test_stems_set_the_feature_map_size():
    x = torch.randn(2, 1, 48, 48)
    sizes = {"cifar": 6, "s2": 3, "imagenet": 2}
    assert list(sizes) == list(STEMS)  # every registered stem, finest maps first
    for stem, side in sizes.items():
        model = create_model("resnet18", stem=stem).eval()
        assert model.forward_maps(x).shape == (2, 512, side, side)


def test_stems_keep_the_checkpoint_layout():
    # stem.0 conv and stem.1 BatchNorm, as the saved models name them
    for name, spec in STEMS.items():
        stem = make_stem(name, in_chans=1, width=8)
        assert list(stem.state_dict())[:2] == ["0.weight", "1.weight"]
        assert stem[0].weight.shape == (8, 1, spec.kernel, spec.kernel) and stem[0].padding == (spec.kernel // 2,) * 2
        assert isinstance(stem[-1], torch.nn.MaxPool2d) == spec.max_pool
    with pytest.raises(ValueError, match="unknown stem 'vgg'; valid: cifar, s2, imagenet$"):
        make_stem("vgg", 1)


def test_forward_returns_features_and_logits_from_one_pass():
    model = create_model("resnet18", attention="cbam", num_classes=5, in_chans=3).eval()
    x = torch.randn(3, 3, 40, 40)
    features, logits = model(x, return_features=True)
    assert features.shape == (3, 512) and logits.shape == (3, 5)
    torch.testing.assert_close(model(x), logits)
    torch.testing.assert_close(model.forward_head(model.forward_features(x)), logits)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("attention", list(ATTENTION_LAYERS))
def test_every_model_forward_backward_without_nan(name, attention):
    model = create_model(name, attention=attention, stem="imagenet", num_classes=7)
    x = torch.randn(4, 1, 48, 48)
    features, logits = model(x, return_features=True)
    (logits.logsumexp(1).mean() + features.pow(2).mean()).backward()
    assert torch.isfinite(logits).all()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.stem[0].weight.grad.abs().sum() > 0


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="resnet18"):
        create_model("vgg")


@pytest.mark.parametrize("attention", list(ATTENTION_LAYERS))
def test_every_residual_branch_starts_alive(attention):
    # A fresh model's residual branches must carry signal and gradient from the first step: with the
    # last BN of a branch at gamma = 0 the branch output is 0 and its first conv gets no gradient.
    model = create_model("resnet18", attention=attention, stem="imagenet").train()
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert all(torch.equal(b.bn2.weight, torch.ones_like(b.bn2.weight)) for b in blocks)
    x = torch.randn(8, 1, 48, 48)
    branch_out = []
    hooks = [b.attn.register_forward_hook(lambda m, i, o: branch_out.append(o.detach())) for b in blocks]
    model(x).logsumexp(1).mean().backward()
    for h in hooks:
        h.remove()
    assert len(branch_out) == len(blocks)
    assert all(o.abs().mean() > 1e-3 for o in branch_out)
    assert all(b.conv1.weight.grad.abs().sum() > 0 for b in blocks)
