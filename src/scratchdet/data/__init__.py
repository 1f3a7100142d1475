"""Datasets: COCO-format loading and checks, generated scenes, the classification set for pre-training."""

# The generated scenes' categories and defaults (`SynthSpec`): here so that the command line's help shows them
# without importing the generator.
DETECTION_SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross")
DEFAULT_OBJECTS = (2, 6)  # objects per scene, inclusive
DEFAULT_RADIUS = (0.16, 0.45)  # object radius as a fraction of the image size
DEFAULT_CLASSIFICATION_PER_CLASS = (150, 30)  # the classification set's images per shape: train, val
