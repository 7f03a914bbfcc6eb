"""Mock push providers for testing a push path without Apple and Google.

- :class:`MockApns`: APNs' ``POST /3/device/{token}`` over HTTP/2 + TLS (ALPN ``h2``), checking
  provider JWTs (or client certificates), topics, push types, priorities and payload size, with
  switches for dead tokens, throttling, outages, GOAWAY, a stream limit and latency.
- :class:`MockFcm`: FCM HTTP v1 ``messages:send`` and the OAuth2 token endpoint a service
  account's ``token_uri`` points to, with FCM's error codes as switches.

Both record what they accepted. They serve the server certificate of a
:func:`~fdpush.gateway.certs.make_test_pki` PKI, so a client trusts them with its CA. See
``docs/gateway.md`` ("Testing without Apple and Google").
"""

from fdpush.testing.h2server import H2Request, H2Response, H2ServerThread, SendGoaway
from fdpush.testing.mock_apns import ApnsKey, ApnsPush, MockApns, make_apns_key
from fdpush.testing.mock_fcm import FCM_ERRORS, FcmMessage, MockFcm

__all__ = [
    "FCM_ERRORS",
    "ApnsKey",
    "ApnsPush",
    "FcmMessage",
    "H2Request",
    "H2Response",
    "H2ServerThread",
    "MockApns",
    "MockFcm",
    "SendGoaway",
    "make_apns_key",
]
