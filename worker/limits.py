"""Size limits, in one place: what the worker accepts, produces and keeps of bad input.

Kafka's default message.max.bytes is 1,048,588 bytes. Every message the worker produces stays
under it, so that no output or dead letter can fail delivery on every retry and stall its partition.
"""

PRODUCER_MAX_REQUEST_BYTES = 1_048_576  # the producer's max_request_size: one message at most
MAX_MESSAGE_BYTES = 1_000_000  # key + value of an output; a bigger one becomes a dead letter
DEAD_LETTER_MAX_BYTES = 900_000  # a dead letter never exceeds this
RAW_PREFIX_BYTES = 65_536  # what a clipped dead letter keeps of the original bytes
MAX_KEY_BYTES = 65_536  # a dead letter drops a bigger record key (the source offset identifies it)
DEFAULT_MAX_EVENT_BYTES = 1_000_000  # input events over this are dead-lettered (BERTSTREAM_MAX_EVENT_BYTES)
MAX_ID_CHARS = 256
MAX_DEPTH = 32  # JSON nesting of an input event
