"""Produce and consume through the eventscope sidecar with confluent-kafka (librdkafka bundled in the
PyPI wheel). Usage: python_roundtrip.py BOOTSTRAP TOPIC COUNT. Prints one JSON line with what it saw."""
import json
import sys
import time

from confluent_kafka import Consumer, Producer

bootstrap, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])

delivered = []
p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "compression.type": "lz4"})
for i in range(count):
    p.produce(
        topic,
        key=f"order-{i}".encode(),
        value=json.dumps({"order": i, "event": "OrderCreated"}).encode(),
        headers=[("source", b"python")],
        on_delivery=lambda err, msg: delivered.append(err is None),
    )
    p.poll(0)
p.flush(30)

c = Consumer({"bootstrap.servers": bootstrap, "group.id": "python-check", "auto.offset.reset": "earliest", "enable.auto.commit": False})
c.subscribe([topic])
got = []
deadline = time.time() + 30
while len(got) < count and time.time() < deadline:
    m = c.poll(0.5)
    if m is None or m.error():
        continue
    got.append({"key": m.key().decode(), "value": json.loads(m.value()), "headers": [[k, v.decode()] for k, v in (m.headers() or [])]})
    c.commit(message=m, asynchronous=False)
c.close()
print(json.dumps({"delivered_ok": sum(delivered), "received": got}))
