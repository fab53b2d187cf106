"""moto's server with DynamoDB requests handled one at a time.

moto serves requests on threads, and its DynamoDB model evaluates a ConditionExpression and then
writes without a lock, so two racing conditional writes can both pass on moto (never on DynamoDB).
The ledger's tests race writers on purpose; serialising DynamoDB calls gives them DynamoDB's
answer. Every other service keeps moto's threads (the ECS and SQS tests wait on each other).

Usage: moto-server.py -H 127.0.0.1 -p PORT (moto_server's own arguments).
"""

import threading

import moto.server
from moto.moto_server.werkzeug_app import DomainDispatcherApplication

_DYNAMODB_LOCK = threading.Lock()


class SerialDynamoDB(DomainDispatcherApplication):
    """Holds one lock around each DynamoDB request, body included."""

    def __call__(self, environ, start_response):
        if not environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            return super().__call__(environ, start_response)
        with _DYNAMODB_LOCK:
            # Drain the response inside the lock: the model runs while it is produced.
            return list(super().__call__(environ, start_response))


moto.server.DomainDispatcherApplication = SerialDynamoDB

if __name__ == "__main__":
    moto.server.main()
