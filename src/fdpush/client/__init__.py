"""The app's end of the chain, in Python: a keyring that opens notifications, and an API client.

- :class:`Keyring` — one app installation's keys at one Fachdienst: makes the iss, derives the
  month generations exactly as the Fachdienst does, keeps them under the concept's retention,
  and opens what arrives in an APNs or FCM push, refusing with typed errors what it must.
- :class:`FachdienstClient` — the Client-FD Push API (both layouts): pushers, channels, history.

An app team can check its own implementation against these, and a test can play the app.
"""

from fdpush.client.api import (
    ApiError,
    Channel,
    FachdienstClient,
    HistoryPage,
    Layout,
    Message,
    Pusher,
)
from fdpush.client.keyring import (
    BadFrame,
    KeyExpired,
    Keyring,
    KeyringError,
    KeyringFileError,
    MalformedNotification,
    MonthTooFarAhead,
    TamperedCiphertext,
    UnknownKeyIdentifier,
)

__all__ = [
    "ApiError",
    "BadFrame",
    "Channel",
    "FachdienstClient",
    "HistoryPage",
    "KeyExpired",
    "Keyring",
    "KeyringError",
    "KeyringFileError",
    "Layout",
    "MalformedNotification",
    "Message",
    "MonthTooFarAhead",
    "Pusher",
    "TamperedCiphertext",
    "UnknownKeyIdentifier",
]
