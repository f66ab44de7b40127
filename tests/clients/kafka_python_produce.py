"""Produce through the eventscope sidecar with kafka-python, which, like Kafka's Java client, puts every
ready partition's batch for a broker into one Produce request (librdkafka sends one partition per request).
Usage: kafka_python_produce.py BOOTSTRAP TOPIC PARTITIONS PER_PARTITION SIZE. Record i of partition p has
the value "p-i:" padded with "x" to SIZE bytes. Prints one JSON line: how many were acknowledged."""
import json
import sys

from kafka import KafkaProducer

bootstrap, topic = sys.argv[1], sys.argv[2]
partitions, per_partition, size = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])

# A long linger and large batches: every partition's records wait for one request.
p = KafkaProducer(
    bootstrap_servers=bootstrap,
    acks="all",
    linger_ms=1000,
    batch_size=4 * per_partition * size,
    max_request_size=16 * 1024 * 1024,
    compression_type=None,
)
futures = []
for i in range(per_partition):
    for part in range(partitions):
        value = f"{part}-{i}:".encode().ljust(size, b"x")
        futures.append(p.send(topic, value=value, partition=part))
p.flush(60)
acked = sum(1 for f in futures if f.succeeded())
p.close(10)
print(json.dumps({"acked": acked}))
