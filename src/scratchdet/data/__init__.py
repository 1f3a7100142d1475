"""Datasets: COCO-format loading and checks, generated scenes, the classification set for pre-training."""

# The generated scenes' default difficulty (`SynthSpec`): here so that the command line's help shows it without
# importing the generator.
DEFAULT_OBJECTS = (2, 6)  # objects per scene, inclusive
DEFAULT_RADIUS = (0.16, 0.45)  # object radius as a fraction of the image size
