"""The model side of bertstream: encode texts and run task heads; `pipelines.training` trains and evaluates them.

Never imports the transport (faust, aiokafka, kafka, redis): the worker calls in through the
`pipelines.model.Model` protocol (texts in, per-task results out), which `Classifier` implements.
Serving never imports `pipelines.training`.
"""

from typing import Any

__all__ = ["Classifier", "Prediction"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `bertstream --help` does not pay for importing torch.
    if name in __all__:
        from pipelines import classifier

        return getattr(classifier, name)
    raise AttributeError(name)
