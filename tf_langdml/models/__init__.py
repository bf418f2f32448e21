"""Models: backbones, the embedder, LanguageGuidedModel and the dtype policy they compute in."""

from tf_langdml.models.backbones import BACKBONES, build_backbone, freeze_batchnorm_statistics
from tf_langdml.models.classifier import CLASSIFIERS, build_imagenet_classifier, classifier_fingerprint
from tf_langdml.models.efficientnet_lite import build_efficientnet_lite0
from tf_langdml.models.embedder import POOLINGS, build_embedder
from tf_langdml.models.language_guided_model import LanguageGuidedModel
from tf_langdml.models.layers import FrozenStatisticsBatchNormalization, ImageNormalization, L2Normalize
from tf_langdml.models.nonfinite import NonFiniteLossError
from tf_langdml.models.precision import PRECISIONS, DeviceCapabilities, precision_policy, resolve_precision
from tf_langdml.models.precision_probe import ProbedModel

__all__ = [
    "BACKBONES",
    "CLASSIFIERS",
    "DeviceCapabilities",
    "FrozenStatisticsBatchNormalization",
    "ImageNormalization",
    "L2Normalize",
    "LanguageGuidedModel",
    "NonFiniteLossError",
    "POOLINGS",
    "PRECISIONS",
    "ProbedModel",
    "build_backbone",
    "build_efficientnet_lite0",
    "build_imagenet_classifier",
    "classifier_fingerprint",
    "build_embedder",
    "freeze_batchnorm_statistics",
    "precision_policy",
    "resolve_precision",
]
