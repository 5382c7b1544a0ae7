"""Exporters from Keras models to deployable formats (.tflite, TFLite Micro C arrays)."""
