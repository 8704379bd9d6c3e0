"""Sends through the official Python SDKs of Segment, RudderStack and Snowplow, unchanged,
to a running Tally: tests/trackers.rs runs this and checks what Tally's read APIs answer.

Reads TALLY_URL and TALLY_WRITE_KEY. Prints one JSON object: every failure an SDK reported
(there must be none) and the Snowplow event ids, which the tracker assigns. Exits 1 on a
failure."""

import json
import os
import sys

import rudderstack.analytics as rudder
from segment.analytics import Client as SegmentClient
from snowplow_tracker import (
    Emitter,
    PageView,
    SelfDescribing,
    SelfDescribingJson,
    StructuredEvent,
    Subject,
    Tracker,
)

URL = os.environ["TALLY_URL"]
KEY = os.environ["TALLY_WRITE_KEY"]
failures = []


def failed(sdk):
    def record(*args):
        failures.append({"sdk": sdk, "error": " ".join(str(arg) for arg in args)})

    return record


def segment():
    client = SegmentClient(write_key=KEY, host=URL, on_error=failed("segment"), max_retries=0)
    order = dict(user_id="u-seg-py", event="Order Completed", message_id="seg-py-1",
                 properties={"revenue": 12.5}, context={"os": {"name": "iOS"}})
    client.track(**order)
    client.track(**order)  # a resend: the same messageId counts once
    client.page(user_id="u-seg-py", name="Home", message_id="seg-py-2",
                properties={"url": "https://shop.example/"})
    client.screen(anonymous_id="anon-seg-py", name="Cart", message_id="seg-py-3")
    client.identify(user_id="u-seg-py", traits={"country": "FR"}, message_id="seg-py-4")
    client.flush()
    # A mixed batch: one call the registry does not know, between two it does. Tally keeps
    # the two, records the third with its reason, and answers so the SDK neither fails nor
    # retries.
    mixed = SegmentClient(write_key=KEY, host=URL, on_error=failed("segment mixed batch"),
                          max_retries=0, upload_size=3, upload_interval=5, gzip=True)
    mixed.track(user_id="u-mixed", event="click", message_id="seg-py-5")
    mixed.track(user_id="u-mixed", event="Refund Issued", message_id="seg-py-bad")
    mixed.track(user_id="u-mixed", event="click", message_id="seg-py-6")
    mixed.flush()


def rudderstack():
    # RudderStack's SDK gzips by default and wants exactly 200.
    client = rudder.Client(write_key=KEY, host=URL, on_error=failed("rudderstack"), max_retries=0)
    order = dict(user_id="u-rs-py", event="Order Completed", message_id="rs-py-1",
                 properties={"revenue": 7})
    client.track(**order)
    client.track(**order)
    client.page(user_id="u-rs-py", name="Home", message_id="rs-py-2",
                properties={"url": "https://shop.example/rs"})
    client.flush()


def snowplow():
    ids = {}
    on_failure = failed("snowplow")

    def sent(success_count, failed_events):
        if failed_events:
            on_failure(f"{len(failed_events)} events failed")

    host = URL.split("://", 1)[1]
    # POST, with the app id as the write key.
    emitter = Emitter(host, protocol="http", method="post", on_failure=sent)
    tracker = Tracker(namespace="shop", emitters=emitter, app_id=KEY)
    user = Subject().set_user_id("u-sp")
    ids["page_view"] = tracker.track(
        PageView(page_url="https://shop.example/sp", page_title="Shop", event_subject=user))
    purchase = SelfDescribingJson("iglu:com.acme/purchase/jsonschema/1-0-0", {"revenue": 30})
    device = SelfDescribingJson("iglu:com.acme/device/jsonschema/1-0-0", {"os": "android"})
    ids["purchase"] = tracker.track(
        SelfDescribing(purchase, event_subject=user, context=[device]))
    ids["structured_event"] = tracker.track(
        StructuredEvent(category="shop", action="add", event_subject=user))
    # A resend, as the emitter makes after a failure: the same payload, the same eid.
    resent = tracker.complete_payload(
        PageView(page_url="https://shop.example/again", event_subject=user)).nv_pairs
    emitter.input(resent)
    emitter.input(dict(resent))
    ids["resent"] = resent["eid"]
    emitter.flush()
    # GET, with the key in the path and the app id left to the app.
    getter = Emitter(f"{host}/sp/{KEY}", protocol="http", method="get", on_failure=sent)
    by_get = Tracker(namespace="shop", emitters=getter, app_id="shop-web")
    ids["get"] = by_get.track(
        PageView(page_url="https://shop.example/get", event_subject=Subject().set_user_id("u-sp-get")))
    getter.flush()
    # GET, with the app id as the key.
    keyed = Emitter(host, protocol="http", method="get", on_failure=sent)
    by_aid = Tracker(namespace="shop", emitters=keyed, app_id=KEY)
    ids["get_aid"] = by_aid.track(
        PageView(page_url="https://shop.example/aid", event_subject=Subject().set_user_id("u-sp-get")))
    keyed.flush()
    return ids


segment()
rudderstack()
snowplow_ids = snowplow()
print(json.dumps({"failures": failures, "snowplow": snowplow_ids}))
sys.exit(1 if failures else 0)
