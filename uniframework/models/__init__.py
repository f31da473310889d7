"""Models: timm backbones behind one interface, and the classifier built on them."""

from .backbones import build_backbone
from .classifier import Classifier, build_classifier, grow_head, shrink_head

__all__ = ["Classifier", "build_backbone", "build_classifier", "grow_head", "shrink_head"]
