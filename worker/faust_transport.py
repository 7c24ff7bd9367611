"""Faust's aiokafka transport with a configurable consumer fetch wait.

faust-streaming hard-codes `fetch_max_wait_ms=1500` for the worker's consumer. A broker may hold
a fetch that long even when new records arrive (the embedded tansu does), which added up to
1.5 s to every event's latency in our benchmark. The wait is set here instead.
"""

from __future__ import annotations

from typing import Any, ClassVar

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() when it builds its fetcher.
        consumer._fetch_max_wait_ms = int(getattr(self.app, "fetch_max_wait_s", 1.5) * 1000)
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    Consumer: ClassVar[type] = _Consumer
