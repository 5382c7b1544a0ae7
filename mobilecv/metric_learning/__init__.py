"""Metric learning: losses and the P x K sampler (`losses`, TensorFlow ops), and
verification / one-shot evaluation and plots (`evaluate`, numpy and scikit-learn).
The identity data sets are in mobilecv.data.glyphs."""
