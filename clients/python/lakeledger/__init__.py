"""Python client for lakeledger: an audit-grade feature store and model registry.

    from lakeledger import Client
    ll = Client("http://127.0.0.1:8080", "llk_...", flight_url="grpc://127.0.0.1:8815")
    ll.ingest("user_clicks", df)
    ll.sql("SELECT * FROM user_clicks VERSION AS OF 3").to_pandas()

Errors raise :class:`LakeledgerError` subclasses carrying the server's code, message and
error id.
"""

from .client import Client, OnlineFeatures, TrainingSet
from .errors import (
    BadRequest,
    Conflict,
    LakeledgerError,
    NotFound,
    PermissionDenied,
    ServerError,
    TooManyRequests,
    Unauthenticated,
    Unavailable,
    Unprocessable,
)
from .verify import VerifyError

__version__ = "0.1.0"

__all__ = [
    "Client",
    "OnlineFeatures",
    "TrainingSet",
    "LakeledgerError",
    "BadRequest",
    "Unauthenticated",
    "PermissionDenied",
    "NotFound",
    "Conflict",
    "Unprocessable",
    "TooManyRequests",
    "Unavailable",
    "ServerError",
    "VerifyError",
]
