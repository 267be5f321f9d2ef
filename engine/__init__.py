"""DenseNet classifiers of acute lymphoblastic leukemia stages: data, training, evaluation, Grad-CAM."""

__version__ = "0.1.0"
