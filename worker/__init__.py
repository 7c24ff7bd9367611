"""The streaming side of bertstream: Kafka (Faust, kafka-python), Redis, the CLI."""
