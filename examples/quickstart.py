"""Send one Purchase to the Conversions API with the capirelay library.

Runs as is against a local Graph API emulator; start one in another terminal:

    capirelay emulator        # http://127.0.0.1:8765, pixel 1234567890, token emulator-token

Against Meta, set the three variables (and use a test event code first):

    CAPIRELAY_GRAPH_URL=https://graph.facebook.com CAPIRELAY_PIXEL_ID=<dataset id>
    CAPIRELAY_ACCESS_TOKEN=<system-user token> CAPIRELAY_TEST_EVENT_CODE=TEST12345
"""

import os
import sys
import time

from capirelay import Content, CustomData, Event, GraphError, SyncGraphClient, UserData

GRAPH_URL = os.environ.get("CAPIRELAY_GRAPH_URL", "http://127.0.0.1:8765")
PIXEL_ID = os.environ.get("CAPIRELAY_PIXEL_ID", "1234567890")
TOKEN = os.environ.get("CAPIRELAY_ACCESS_TOKEN", "emulator-token")
TEST_EVENT_CODE = os.environ.get("CAPIRELAY_TEST_EVENT_CODE")

event = Event(
    event_name="Purchase",
    event_time=int(time.time()),  # Meta refuses events older than 7 days
    event_id="order-1001",  # the same id your pixel sends as eventID
    action_source="website",
    event_source_url="https://shop.example/thank-you",
    user_data=UserData(
        email="John_Smith@Gmail.com",
        phone="(650) 555-1212",  # completed to 16505551212 from the country
        first_name="Mary-Ann",
        last_name="O'Neil",
        date_of_birth="2/16/1997",  # -> 19970216
        city="São Paulo",
        state="California",
        zip_code="94025-1234",
        country="United States",  # -> us
        external_id="customer-42",
        client_ip_address="2001:db8::1",
        client_user_agent="Mozilla/5.0 (quickstart)",
        fbp="fb.1.1558571054389.1098115397",
    ),
    custom_data=CustomData(
        value=25.0,
        currency="EUR",
        contents=[Content(id="SKU-1", quantity=1, item_price=25.0)],
    ),
)
wire = event.to_wire(default_country="US")  # normalized, hashed, empty values dropped
for problem in wire.problems:  # fields that could not be used, and why
    print(f"dropped {problem.field}: {problem.message}")

try:
    with SyncGraphClient(base_url=GRAPH_URL) as client:  # the token goes in the body, not the URL
        response = client.send_events(
            PIXEL_ID, [wire.payload], access_token=TOKEN, test_event_code=TEST_EVENT_CODE
        )
except GraphError as error:
    if error.status is None and GRAPH_URL.startswith("http://127.0.0.1"):
        sys.exit(f"no Graph API emulator at {GRAPH_URL}: start one with `capirelay emulator`")
    sys.exit(f"not sent: {error.user_msg or error.message} (fbtrace_id {error.fbtrace_id})")

print(f"events_received: {response.events_received}")
print(f"fbtrace_id: {response.fbtrace_id}")
print(f"hashed email sent: {wire.payload['user_data']['em'][0]}")
