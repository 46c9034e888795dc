"""Evaluation metrics: classification accuracy and the Fréchet distance of generated images."""
