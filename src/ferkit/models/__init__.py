"""Backbones and attention layers."""
from ferkit.models.attention import CBAM, ChannelGate, SEModule, SpatialGate, create_attention, register_attention
from ferkit.models.registry import create_model, list_models, register_model
from ferkit.models.resnet import ResNet

__all__ = [
    "CBAM", "ChannelGate", "SEModule", "SpatialGate", "ResNet",
    "create_attention", "create_model", "list_models", "register_attention", "register_model",
]
