"""The streaming runtime: exactly what `python -m worker` (or `bertstream worker`) loads. Kafka through
Faust and kafka-python, Redis, and the model side through `pipelines.model.Model`."""
