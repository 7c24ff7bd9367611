"""Services for development and tests: the embedded Kafka-protocol broker (tansu), Redis, a TLS
front, and a worker run as a child process. Production uses Apache Kafka and a real Redis."""
