"""ferkit: facial expression recognition with ResNet-18 + CBAM and island loss (Sun 2021)."""
from ferkit.config import TrainConfig, load_config
from ferkit.data import FERDataset, load_dataset
from ferkit.engine.predict import Recognizer
from ferkit.errors import FerkitError
from ferkit.losses import create_loss
from ferkit.models import create_model, list_models

__version__ = "0.1.0"

__all__ = ["FERDataset", "FerkitError", "TrainConfig", "create_loss", "create_model", "list_models",
           "load_config", "load_dataset", "Recognizer", "__version__"]
