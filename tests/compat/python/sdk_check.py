#!/usr/bin/env python3
"""The official Python server SDK (PyPI `pusher`, pinned in requirements.txt) against ringcast.

Run by tests/it/compat.rs, which starts the broker, opens WebSocket clients that subscribe,
join a presence channel and sign in (the fixtures named in the environment below), runs this
script, and then checks what those clients received (the events triggered here, and the
termination of RINGCAST_PY_USER's connection). This script checks the REST answers the SDK gets.

Environment: RINGCAST_HOST, RINGCAST_PORT, RINGCAST_APP_ID, RINGCAST_APP_KEY,
RINGCAST_APP_SECRET (as for the node suite) and the fixtures:
  RINGCAST_PY_PUBLIC      public channel with 2 subscribers
  RINGCAST_PY_BATCH       public channel with 1 subscriber
  RINGCAST_PY_PRESENCE    presence channel with users "1" and "2" ("2" on two connections)
  RINGCAST_PY_USER        user signed in on one connection; terminated here
  RINGCAST_PY_OTHER_USER  user signed in on another connection; sent an event, not terminated

Plain unittest; exits non-zero when a check fails. Every request has a 10 s timeout.
"""

import os
import sys
import unittest

NEEDS = "the Python SDK check needs python3 and `pip install -r tests/compat/python/requirements.txt`"

try:
    import pusher
    from pusher.errors import PusherBadAuth, PusherBadStatus
    from pusher.http import POST, Request
    from pusher.version import VERSION
except ImportError as error:  # the Rust test checks this first; this is for running by hand
    print(f"{NEEDS} ({error})", file=sys.stderr)
    sys.exit(2)


def env(name, default=None):
    value = os.environ.get(name)
    if value:
        return value
    if default is not None:
        return default
    print(f"{name} is not set (see the docstring of {sys.argv[0]})", file=sys.stderr)
    sys.exit(2)


HOST = env("RINGCAST_HOST", "127.0.0.1")
PORT = int(env("RINGCAST_PORT"))
APP_ID = env("RINGCAST_APP_ID", "123456")
KEY = env("RINGCAST_APP_KEY", "app-key")
SECRET = env("RINGCAST_APP_SECRET", "app-secret")
PUBLIC = env("RINGCAST_PY_PUBLIC")
BATCH = env("RINGCAST_PY_BATCH")
PRESENCE = env("RINGCAST_PY_PRESENCE")
USER = env("RINGCAST_PY_USER")
OTHER_USER = env("RINGCAST_PY_OTHER_USER")
# RINGCAST_TLS=1: the port is the broker's TLS listener, its certificate issued by the test CA
# in RINGCAST_CA.
TLS = env("RINGCAST_TLS", "0") == "1"
CA = env("RINGCAST_CA", "")


def client(secret=SECRET):
    sdk = pusher.Pusher(
        app_id=APP_ID, key=KEY, secret=secret, host=HOST, port=PORT, ssl=TLS, timeout=10
    )
    if TLS:
        # With ssl=True the SDK's requests backend verifies against its own bundled CA file
        # (`verify=CERT_PATH`, set after the options it is given): point it at the test CA.
        sdk._pusher_client.http.options["verify"] = CA
    return sdk


class PythonSdk(unittest.TestCase):
    """Each test uses its own event names, so the Rust side can check them independently."""

    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.pusher = client()

    def test_trigger_one_channel(self):
        result = self.pusher.trigger(PUBLIC, "py-event", {"message": "hello from python", "n": 1})
        self.assertEqual(result, {})

    def test_trigger_several_channels(self):
        result = self.pusher.trigger([PUBLIC, BATCH], "py-multi", {"to": "both"})
        self.assertEqual(result, {})

    def test_trigger_text_data(self):
        # A str is sent as is (not JSON-encoded again).
        result = self.pusher.trigger(PUBLIC, "py-text", "plain text, ünïcode ✓")
        self.assertEqual(result, {})

    def test_trigger_batch(self):
        batch = [
            {"channel": PUBLIC, "name": "py-batch", "data": {"i": 0}},
            {"channel": BATCH, "name": "py-batch", "data": {"i": 1}},
            {"channel": PUBLIC, "name": "py-batch", "data": {"i": 2}},
        ]
        self.assertEqual(self.pusher.trigger_batch(batch), {})

    def test_send_to_user(self):
        result = self.pusher.send_to_user(OTHER_USER, "py-notice", {"hello": OTHER_USER})
        self.assertEqual(result, {})

    def test_channels_info(self):
        channels = self.pusher.channels_info()["channels"]
        for name in (PUBLIC, BATCH, PRESENCE):
            self.assertIn(name, channels)

    def test_channels_info_with_prefix_filter(self):
        prefix = PUBLIC.rsplit("-", 1)[0] + "-"
        channels = self.pusher.channels_info(prefix_filter=prefix)["channels"]
        self.assertIn(PUBLIC, channels)
        self.assertNotIn(BATCH, channels)
        self.assertNotIn(PRESENCE, channels)

    def test_channels_info_presence_user_count(self):
        channels = self.pusher.channels_info(prefix_filter="presence-", attributes=["user_count"])
        self.assertEqual(channels["channels"], {PRESENCE: {"user_count": 2}})

    def test_channel_info_subscription_count(self):
        # The SDK signs this GET with body_md5 of the empty body.
        self.assertEqual(
            self.pusher.channel_info(PUBLIC, ["subscription_count"]),
            {"occupied": True, "subscription_count": 2},
        )
        self.assertEqual(
            self.pusher.channel_info(BATCH, ["subscription_count"]),
            {"occupied": True, "subscription_count": 1},
        )

    def test_channel_info_unoccupied(self):
        self.assertEqual(self.pusher.channel_info("py-never-used")["occupied"], False)

    def test_channel_info_presence_user_count(self):
        info = self.pusher.channel_info(PRESENCE, ["user_count"])
        self.assertEqual(info, {"occupied": True, "user_count": 2})

    def test_users_info(self):
        users = self.pusher.users_info(PRESENCE)["users"]
        self.assertEqual(sorted(user["id"] for user in users), ["1", "2"])

    def test_wrong_secret_is_refused(self):
        with self.assertRaises(PusherBadAuth):
            client(secret="not-the-secret").trigger(PUBLIC, "py-forged", {"n": 0})
        with self.assertRaises(PusherBadAuth):
            client(secret="not-the-secret").channels_info()

    def test_terminate_user_connections(self):
        # pusher 3.3.4 sends this to /users/{id}/terminate_connections, without the
        # /apps/{app_id} prefix every other call (and the REST API reference) has.
        try:
            result = self.pusher.terminate_user_connections(USER)
        except PusherBadStatus as error:
            # Terminate through the documented path with the SDK's own signing, so the Rust side
            # still checks the effect; this test fails either way.
            request = Request(
                self.pusher._pusher_client,
                POST,
                f"/apps/{APP_ID}/users/{USER}/terminate_connections",
                {},
            )
            fallback = self.pusher._pusher_client.http.send_request(request)
            self.fail(
                f"terminate_user_connections({USER!r}) failed: {error}. The SDK posts to "
                f"/users/{USER}/terminate_connections (no /apps/{APP_ID} prefix); the same call "
                f"on /apps/{APP_ID}/users/{USER}/terminate_connections returned {fallback!r}"
            )
        self.assertEqual(result, {})


if __name__ == "__main__":
    print(f"pusher (PyPI) {VERSION} against {HOST}:{PORT}", file=sys.stderr)
    unittest.main(verbosity=2)
