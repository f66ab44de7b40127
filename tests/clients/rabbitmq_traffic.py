"""RabbitMQ traffic for tests/brokers.rs, through pika (a real AMQP 0-9-1 client from PyPI).

    publish PORT QUEUE N [AGE_SECONDS]   declare QUEUE (durable) and publish N persistent messages; with
                                         AGE_SECONDS, each carries the AMQP timestamp property now - AGE;
                                         prints the first publish's time (ms since the epoch)
    hold PORT QUEUE PREFETCH             take PREFETCH messages and never ack them: print "held" once they
                                         are in, then keep the channel open until stdin closes (a stalled
                                         consumer)
    consume PORT QUEUE N                 consume and ack N messages, then exit
    declare PORT PREFIX N                declare N queues PREFIX-00000 ... and put one message in every tenth
                                         (for the scale benchmark)
"""
import sys
import time

import pika


def connect(port):
    return pika.BlockingConnection(pika.ConnectionParameters(host="127.0.0.1", port=int(port), heartbeat=0))


def main():
    cmd, port, queue = sys.argv[1], sys.argv[2], sys.argv[3]
    conn = connect(port)
    ch = conn.channel()
    if cmd == "declare":
        n = int(sys.argv[4])
        for i in range(n):
            name = f"{queue}-{i:05}"
            ch.queue_declare(name, durable=True)
            if i % 10 == 0:
                ch.basic_publish("", name, b"task", pika.BasicProperties(delivery_mode=2))
        conn.close()
        return
    ch.queue_declare(queue, durable=True)
    if cmd == "publish":
        n = int(sys.argv[4])
        age = int(sys.argv[5]) if len(sys.argv) > 5 else None
        first = time.time()
        for _ in range(n):
            props = pika.BasicProperties(delivery_mode=2, timestamp=int(time.time()) - age if age is not None else None)
            ch.basic_publish("", queue, b"order", props)
        conn.close()
        # The first message's publish time, in ms: the test's ground truth for the queue's age.
        print(int(first * 1000), flush=True)
    elif cmd == "hold":
        prefetch = int(sys.argv[4])
        ch.basic_qos(prefetch_count=prefetch)
        got = []

        def on_message(channel, method, properties, body):
            got.append(method.delivery_tag)
            if len(got) == prefetch:
                print("held", flush=True)

        ch.basic_consume(queue, on_message, auto_ack=False)
        # Serve the connection until the test closes stdin.
        import select
        while True:
            conn.process_data_events(time_limit=0.2)
            r, _, _ = select.select([sys.stdin], [], [], 0)
            if r and not sys.stdin.readline():
                break
        try:
            conn.close()
        except Exception:
            pass  # the test may have stopped the node first
    elif cmd == "consume":
        n = int(sys.argv[4])
        done = 0
        for method, _, _ in ch.consume(queue, inactivity_timeout=30):
            if method is None:
                break
            ch.basic_ack(method.delivery_tag)
            done += 1
            if done == n:
                break
        ch.cancel()
        conn.close()
        print(f"consumed {done}", flush=True)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
