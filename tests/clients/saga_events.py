"""Produce saga events with confluent-kafka (librdkafka bundled in the PyPI wheel), one at a time and
acknowledged, in the order given. Usage: saga_events.py BOOTSTRAP < events.jsonl, where each line is
{"topic": ..., "key": ... or null, "value": ... (a string) or null, "headers": {name: value}}.
Prints one JSON line: {"delivered": N}."""
import json
import sys

from confluent_kafka import Producer

p = Producer({"bootstrap.servers": sys.argv[1], "linger.ms": 0, "message.max.bytes": 20 * 1024 * 1024})
delivered = []
for line in sys.stdin:
    if not line.strip():
        continue
    e = json.loads(line)
    p.produce(
        e["topic"],
        key=e["key"].encode() if e.get("key") is not None else None,
        value=e["value"].encode() if e.get("value") is not None else None,
        headers=[(k, v.encode()) for k, v in (e.get("headers") or {}).items()],
        on_delivery=lambda err, msg: delivered.append(err is None),
    )
    p.flush(30)
print(json.dumps({"delivered": sum(delivered)}))
