"""Model compression: magnitude pruning, weight clustering, quantisation-aware training.

Each technique is its own module with a table of the layers it supports;
`pipeline.compress()` chains them. All work on tf_keras models (tfmot's limit).
"""
