"""Where a run trains: the tf.distribute strategy of `train.strategy` and this process's role.

`MultiWorkerMirroredStrategy` configures collective ops in TensorFlow's eager context,
which is only possible before anything else initialises that context (building a model,
seeding, `tf.config` calls, tf.data). So a run starts its `Cluster` first, before any
other TensorFlow work.

In a multi-worker cluster (described by `TF_CONFIG`) the chief is the task of type
"chief", else worker 0. The chief writes the artefacts and runs every step; the other
workers take part in training only. Workers must issue the same collective operations in
the same order, so whether training runs at all is the chief's decision, sent to every
worker with `Cluster.sync` (a one-number all-reduce), and the run ends with one more
`sync` so that no worker leaves the cluster while the chief still works (TensorFlow's
coordination service would otherwise report the worker as crashed).
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
from dataclasses import dataclass
from typing import Any

from mobilecv.errors import InputError, parse_choice


class Strategy(enum.StrEnum):
    DEFAULT = "default"
    MIRRORED = "mirrored"
    MULTI_WORKER = "multi_worker"


class Message(enum.IntEnum):
    """What the chief tells the other workers at a `Cluster.sync`."""

    TRAIN = 1  # the train step runs: join it
    SKIP = 2  # the train step is up to date on the chief: nothing to do
    DONE = 3  # the chief finished the run
    FAILED = 4  # the chief failed outside training


@dataclass(frozen=True)
class Task:
    """This process's place in a multi-worker cluster, read from TF_CONFIG."""

    type: str
    index: int
    is_chief: bool

    @property
    def name(self) -> str:
        return f"{self.type} {self.index}"


def task_from_tf_config(text: str | None) -> Task:
    """Parse TF_CONFIG; the chief is task type "chief", or worker 0 when there is none."""
    if not text:
        raise InputError("train.strategy multi_worker needs TF_CONFIG describing the cluster")
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        task_type, index = str(task["type"]), int(task["index"])
        members = cluster[task_type]
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(
            'TF_CONFIG must be JSON like {"cluster": {"worker": ["host:port", ...]}, "task": '
            f'{{"type": "worker", "index": 0}}}} ({type(exc).__name__}: {exc})'
        ) from None
    if not 0 <= index < len(members):
        raise InputError(
            f"TF_CONFIG task index {index} is outside cluster {task_type} ({len(members)} tasks)"
        )
    is_chief = task_type == "chief" or (
        task_type == "worker" and index == 0 and "chief" not in cluster
    )
    return Task(task_type, index, is_chief)


def strategy_for(kind: Strategy | str):
    """A new tf.distribute strategy for `train.strategy` (None for TF's default)."""
    from mobilecv._tf import tf

    kind = parse_choice(Strategy, kind, "train.strategy")
    if kind is Strategy.DEFAULT:
        return None
    T = tf()
    if kind is Strategy.MIRRORED:
        devices = [d.name for d in T.config.list_logical_devices("GPU")] or [
            d.name for d in T.config.list_logical_devices("CPU")
        ]
        return T.distribute.MirroredStrategy(devices=devices)
    task_from_tf_config(os.environ.get("TF_CONFIG"))
    return T.distribute.MultiWorkerMirroredStrategy()


@dataclass
class Cluster:
    """The run's strategy (None: TF's default) and this process's task in it."""

    kind: Strategy
    strategy: Any = None
    task: Task = Task("chief", 0, True)

    @classmethod
    def start(cls, kind: Strategy | str) -> Cluster:
        """Create the strategy; call this before any other TensorFlow work of the process."""
        kind = parse_choice(Strategy, kind, "train.strategy")
        task = (
            task_from_tf_config(os.environ.get("TF_CONFIG"))
            if kind is Strategy.MULTI_WORKER
            else Task("chief", 0, True)
        )
        return cls(kind, strategy_for(kind), task)

    @property
    def is_chief(self) -> bool:
        return self.task.is_chief

    @property
    def multi_worker(self) -> bool:
        return self.kind is Strategy.MULTI_WORKER

    def scope(self):
        """Create (or load) models to train inside this scope."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def sync(self, message: Message | None = None) -> Message:
        """Every worker calls this at the same point; all of them get the chief's message.

        A collective sum in which only the chief's first replica contributes.
        """
        from mobilecv._tf import tf

        T = tf()
        mine = float(message or 0) if self.is_chief else 0.0

        def chief_value():
            context = T.distribute.get_replica_context()
            first = context.replica_id_in_sync_group == 0
            return context.all_reduce("sum", T.constant(mine if first else 0.0))

        total = self.strategy.experimental_local_results(self.strategy.run(chief_value))[0]
        return Message(int(round(float(total))))

    def broadcast_weights(self, model) -> None:
        """Give every worker the chief's weights (each may have loaded different ones)."""
        from mobilecv._tf import tf

        if not self.multi_worker:
            return
        T = tf()

        def from_chief(value):
            context = T.distribute.get_replica_context()
            first = context.replica_id_in_sync_group == 0
            return context.all_reduce("sum", value if first else T.zeros_like(value))

        def first_result(value):
            return self.strategy.experimental_local_results(value)[0]

        # Local copies: reading a BatchNorm statistic (an ON_READ variable) in cross-replica
        # context would average it over the workers before the chief's value is sent.
        for variable in model.weights:
            local = first_result(variable).numpy()
            variable.assign(first_result(self.strategy.run(from_chief, args=(T.constant(local),))))
