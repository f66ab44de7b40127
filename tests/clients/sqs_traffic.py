"""SQS and SNS traffic for tests/brokers.rs, through boto3 (the AWS SDK for Python) against moto's server.

    setup ENDPOINT    create the queues and the SNS topic, send, receive and dead-letter known numbers of
                      messages; print what was built as JSON
"""
import json
import sys

import boto3


def main():
    endpoint = sys.argv[2]
    kw = dict(endpoint_url=endpoint, region_name="eu-west-1", aws_access_key_id="testing", aws_secret_access_key="testing")
    sqs = boto3.client("sqs", **kw)
    sns = boto3.client("sns", **kw)

    def queue(name, **attrs):
        url = sqs.create_queue(QueueName=name, Attributes={k: str(v) for k, v in attrs.items()})["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        return url, arn

    def send(url, n, **kw):
        for i in range(0, n, 10):
            entries = [{"Id": str(j), "MessageBody": f"order {i + j}", **kw} for j in range(min(10, n - i))]
            sqs.send_message_batch(QueueUrl=url, Entries=entries)

    # orders: fed by the SNS topic order-events (100 through it, 1,100 sent directly); 1,000 waiting and 200 received but not deleted.
    orders, orders_arn = queue("orders")
    topic = sns.create_topic(Name="order-events")["TopicArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=orders_arn, Attributes={"RawMessageDelivery": "true"})
    for i in range(0, 100, 10):
        sns.publish_batch(TopicArn=topic, PublishBatchRequestEntries=[{"Id": str(j), "Message": f"order {i + j}"} for j in range(10)])
    send(orders, 1100)
    received = 0
    while received < 200:
        r = sqs.receive_message(QueueUrl=orders, MaxNumberOfMessages=min(10, 200 - received), VisibilityTimeout=600)
        received += len(r.get("Messages", []))
    # idle: nothing receives from it.
    idle, _ = queue("idle")
    send(idle, 50)
    # delayed: 30 messages not yet visible.
    delayed, _ = queue("delayed")
    send(delayed, 30, DelaySeconds=600)
    # payments: 5 messages received twice without deletion go to its dead-letter queue.
    _, dlq_arn = queue("payments-dlq")
    payments, _ = queue("payments", RedrivePolicy=json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 1}))
    send(payments, 5)
    for _ in range(3):
        sqs.receive_message(QueueUrl=payments, MaxNumberOfMessages=10, VisibilityTimeout=0)
    print(json.dumps({"orders": 1200, "in_flight": 200, "idle": 50, "delayed": 30}), flush=True)


if __name__ == "__main__":
    main()
