"""Losses: softmax cross-entropy, center loss and island loss, combined as L = L_S + lambda * L_aux."""
from ferkit.losses.center import CenterLoss, IslandLoss
from ferkit.losses.objective import FERLoss, LossParts, create_loss, list_losses, register_loss

__all__ = ["CenterLoss", "IslandLoss", "FERLoss", "LossParts", "create_loss", "list_losses", "register_loss"]
