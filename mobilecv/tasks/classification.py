"""Image classification: one class per image (the whole canon up to EfficientNet).

The output is a (N, classes) probability vector (softmax), or logits where a model ends
without softmax; labels are (N,) integer class ids. Test-time techniques: 10-crop and
ensembles (mobilecv.evaluate).
"""

from __future__ import annotations

import numpy as np

from mobilecv import postprocess
from mobilecv.layers import classifier_head
from mobilecv.tasks.base import Task, deepest, register_task


@register_task
class Classification(Task):
    name = "classification"
    outputs = postprocess.TASK_OUTPUTS["classification"]
    primary_metric = "accuracy"
    agreement_metric = "top1_agreement"
    test_time = frozenset({"multi_crop", "ensemble"})

    def head(self, K, features, *, classes: int, dropout: float = 0.0):
        return {"scores": classifier_head(K, deepest(features), classes, dropout)}

    def compile(self, model, optimizer, **_):
        from mobilecv._tf import get_keras, is_keras3_model
        from mobilecv.train import outputs_probabilities

        K = get_keras("keras3" if is_keras3_model(model) else "tf_keras")
        model.compile(
            optimizer=optimizer,
            loss=K.losses.SparseCategoricalCrossentropy(
                from_logits=not outputs_probabilities(model)
            ),
            metrics=["accuracy"],
        )

    def keras_targets(self, y):
        return y, None

    def decode(self, outputs):
        return postprocess.classification(outputs["scores"])

    def score(self, outputs, y) -> dict[str, float]:
        predicted = self.decode(outputs)["classes"][:, 0]
        return {"accuracy": float(np.mean(predicted == np.asarray(y)))}

    def agreement(self, reference, converted) -> dict[str, float]:
        a = np.asarray(reference["scores"]).reshape(len(reference["scores"]), -1)
        b = np.asarray(converted["scores"]).reshape(len(converted["scores"]), -1)
        return {"top1_agreement": float(np.mean(np.argmax(a, 1) == np.argmax(b, 1)))}
