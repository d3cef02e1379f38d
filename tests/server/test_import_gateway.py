"""``capirelay import`` end to end, on both backends: a file goes into the storage a running
gateway uses, and the gateway delivers it to the emulator."""

from __future__ import annotations

import csv
import hashlib
import pickle
import time
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from capirelay.cli import app as cli_app
from capirelay.config import PixelSettings, Secret
from capirelay.emulator.testing import RunningEmulator
from capirelay.importer import Importer, read_rows
from capirelay.sources.mapping import parse_mapping
from waiting import wait_for

from .conftest import PIXEL_ID, TOKEN_ENV

DAY = 86400
HEADER = [
    "event_name",
    "event_time",
    "event_id",
    "action_source",
    "email",
    "phone",
    "first_name",
    "last_name",
    "city",
    "state",
    "zip_code",
    "country",
    "external_id",
    "value",
    "currency",
    "order_id",
]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def config_file(tmp_path: Path, storage_url: str) -> Path:
    path = tmp_path / "capirelay.toml"
    path.write_text(
        f'storage = "{storage_url}"\n'
        f'[pixels.{PIXEL_ID}]\naccess_token = {{ env = "{TOKEN_ENV}" }}\n'
        'default_country = "US"\n'
    )
    return path


def write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    with path.open("w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=HEADER)
        out.writeheader()
        for row in rows:
            out.writerow(row)
    return path


def store_sale(uid: str, n: int, age_days: float = 0.1, **extra: object) -> dict[str, object]:
    row: dict[str, object] = {
        "event_name": "Purchase",
        "event_time": int(time.time() - age_days * DAY),
        "action_source": "physical_store",
        "email": f"Shopper{n}.{uid}@Example.com",
        "phone": "(650) 555-0100",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "city": "Palo Alto",
        "state": "CA",
        "zip_code": "94301",
        "country": "US",
        "external_id": f"crm-{uid}{n}",
        "value": "19.90",
        "currency": "USD",
        "order_id": f"{uid}store-{n}",
    }
    row.update(extra)
    return row


def delivered_for(emulator: RunningEmulator, uid: str) -> list[dict]:
    return [
        e["event"]
        for e in emulator.state.events(PIXEL_ID)
        if str(e["event"].get("custom_data", {}).get("order_id", "")).startswith(uid)
    ]


def run_import(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli_app, ["import", *args])
    return result.exit_code, result.output


def test_an_import_is_delivered_once_and_rerunning_queues_nothing(
    gateway_url: str, emulator: RunningEmulator, config_file: Path, tmp_path: Path, uid: str
) -> None:
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3 * DAY))
    rows = [
        store_sale(uid, 0),
        store_sale(uid, 1, event_time=iso),  # ISO 8601
        store_sale(uid, 2, age_days=40),  # physical_store: 62 days are fine
        store_sale(uid, 3, age_days=8, action_source="system_generated"),  # 7 days only
        store_sale(uid, 4, age_days=80),
        store_sale(uid, 5, value="lots"),
        store_sale(uid, 6, event_time="yesterday"),
    ]
    data = write_csv(tmp_path / "sales.csv", rows)

    code, output = run_import(str(data), "--pixel", PIXEL_ID, "--config", str(config_file))

    assert code == 1, output  # some rows were rejected
    assert output.strip().splitlines()[-1] == "3 queued, 0 duplicate, 4 rejected"
    # Counted as problems, which a rejected row can have several of, and said so.
    assert "problems of the rejected rows (a row can have several): " in output
    sent = wait_for(lambda: (found := delivered_for(emulator, uid)) and len(found) >= 3 and found)
    assert sorted(e["custom_data"]["order_id"] for e in sent) == [
        f"{uid}store-0",
        f"{uid}store-1",
        f"{uid}store-2",
    ]
    assert {e["user_data"]["em"][0] for e in sent} == {
        sha(f"shopper{n}.{uid}@example.com") for n in range(3)
    }
    assert all(e["action_source"] == "physical_store" for e in sent)

    with (tmp_path / "sales.csv.rejected.csv").open() as f:
        rejected = list(csv.DictReader(f))
    assert [r["line"] for r in rejected] == ["5", "6", "7", "8"]
    assert "more than 7 days in the past" in rejected[0]["problems"]
    assert "more than 62 days in the past" in rejected[1]["problems"]
    assert "custom_data.value" in rejected[2]["problems"]
    assert "ISO 8601" in rejected[3]["problems"]
    text = (tmp_path / "sales.csv.rejected.csv").read_text()
    # No raw PII in the rejects file: neither the email nor the phone, in any of the forms
    # it could take (a bare "650" would also match the hex of a row's hashed id).
    assert "example.com" not in text.lower()
    for phone in ("(650) 555-0100", "6505550100", "555-0100", "5550100"):
        assert phone not in text

    code, output = run_import(str(data), "--pixel", PIXEL_ID, "--config", str(config_file))
    assert output.strip().splitlines()[-1] == "0 queued, 3 duplicate, 4 rejected"
    traced = CliRunner().invoke(
        cli_app, ["trace", f"{uid}store-0", "--order", "--config", str(config_file), "--json"]
    )
    [story] = orjson.loads(traced.stdout)
    assert story["status"] == "delivered"
    assert {r["source"] for r in story["receipts"]} == {"import"}


def test_a_dry_run_predicts_quality_and_writes_nothing(
    config_file: Path, tmp_path: Path, uid: str
) -> None:
    data = write_csv(
        tmp_path / "dry.csv",
        [store_sale(uid, 0), store_sale(uid, 1, age_days=9, action_source="website")],
    )

    code, output = run_import(
        str(data), "--pixel", PIXEL_ID, "--config", str(config_file), "--dry-run"
    )

    assert code == 1
    assert "predicted match quality:" in output
    assert output.strip().splitlines()[-1] == "1 would be queued, 1 rejected (dry run)"
    assert not (tmp_path / "dry.csv.rejected.csv").exists()
    traced = CliRunner().invoke(
        cli_app, ["trace", f"{uid}store-0", "--order", "--config", str(config_file)]
    )
    assert traced.exit_code == 1


def test_website_rows_carry_their_page_and_browser_in_default_columns(
    config_file: Path, tmp_path: Path, uid: str
) -> None:
    """Meta requires event_source_url and client_user_agent for website events: the
    default columns take them (and the IP), so no mapping file is needed."""
    row = {
        **store_sale(uid, 0),
        "action_source": "website",
        "event_source_url": "https://shop.example/thank-you",
        "client_user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
        "client_ip_address": "203.0.113.9",
    }
    data = tmp_path / "web.csv"
    with data.open("w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=list(row))
        out.writeheader()
        out.writerow(row)

    code, output = run_import(
        str(data), "--pixel", PIXEL_ID, "--config", str(config_file), "--dry-run"
    )

    assert code == 0, output
    assert output.strip().splitlines()[-1] == "1 would be queued, 0 rejected (dry run)"


def test_a_mapping_file_reads_any_layout_from_json_lines(
    emulator: RunningEmulator, config_file: Path, tmp_path: Path, uid: str
) -> None:
    mapping = tmp_path / "crm.toml"
    mapping.write_text(
        """
[defaults]
action_source = "system_generated"

[[event]]
when = "stage == 'won'"
[event.set]
event_name = "Purchase"
custom_data.currency = "EUR"
[event.map]
event_time = "closed_at"
event_id = { path = "deal", transform = "str", format = "deal:{}" }
user_data.email = "contact.mail"
custom_data.value = { path = "amount", transform = "float" }
custom_data.order_id = { path = "deal", transform = "str" }
"""
    )
    closed = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - DAY))
    lines = [
        {
            "deal": f"{uid}d1",
            "stage": "won",
            "closed_at": closed,
            "contact": {"mail": "buyer@example.com"},
            "amount": "250",
        },
        {"deal": f"{uid}d2", "stage": "lost", "closed_at": closed, "contact": {}, "amount": 0},
        {
            "deal": f"{uid}d3",
            "stage": "won",
            "closed_at": int(time.time()) - 60,
            "contact": {"mail": "other@example.com"},
            "amount": 99.5,
        },
    ]
    data = tmp_path / "deals.jsonl"
    data.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n")

    code, output = run_import(
        str(data), "--pixel", PIXEL_ID, "--config", str(config_file), "--mapping", str(mapping)
    )

    assert output.strip().splitlines()[-1] == "2 queued, 0 duplicate, 1 rejected"
    assert code == 1
    sent = wait_for(lambda: (found := delivered_for(emulator, uid)) and len(found) >= 2 and found)
    assert sorted(e["event_id"] for e in sent) == [f"deal:{uid}d1", f"deal:{uid}d3"]
    assert {e["custom_data"]["value"] for e in sent} == {250.0, 99.5}


def test_unusable_files_get_clear_errors(config_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("event_name,event_time,mail\nPurchase,1,x@y.z\n")
    code, output = run_import(str(bad), "--pixel", PIXEL_ID, "--config", str(config_file))
    assert code == 2 and "unknown column(s) mail" in output and "--mapping" in output

    code, output = run_import(str(bad), "--pixel", "999", "--config", str(config_file))
    assert code == 2 and "pixel 999 is not configured" in output

    other = tmp_path / "rows.txt"
    other.write_text("x")
    code, output = run_import(str(other), "--pixel", PIXEL_ID, "--config", str(config_file))
    assert code == 2 and "--format csv" in output


def test_rows_stream_with_their_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "quoted.csv"
    path.write_text('event_name,event_time,email\nPurchase,1,"a\nb@c.d"\n\nLead,2,x@y.z\n')
    with path.open("rb") as f:
        rows = list(read_rows(f, "csv"))
    assert [line for line, _ in rows] == [3, 5]
    assert rows[1][1] == {"event_name": "Lead", "event_time": "2", "email": "x@y.z"}


SHORT_HEADER = [  # 11 columns, as in the reviewer's file
    "event_name",
    "event_time",
    "event_id",
    "action_source",
    "email",
    "first_name",
    "last_name",
    "value",
    "currency",
    "order_id",
    "country",
]


def short_row(uid: str, n: int, last_name: str = "Lovelace") -> list[str]:
    return [
        "Purchase",
        str(int(time.time() - 0.1 * DAY)),
        f"{uid}sh-{n}",
        "physical_store",
        f"shopper{n}.{uid}@example.com",
        "Ada",
        last_name,
        "12.50",
        "USD",
        f"{uid}short-{n}",
        "US",
    ]


def test_rows_whose_field_count_differs_from_the_header_are_rejected_by_line(
    emulator: RunningEmulator, config_file: Path, tmp_path: Path, uid: str
) -> None:
    """An unquoted comma (Smith, Jr.), a stray 12th field or a missing field shifts the
    row: it is refused as a row, naming its line and its count, and nothing else is lost."""
    lines = [
        ",".join(SHORT_HEADER),
        ",".join(short_row(uid, 0)),  # line 2: fine
        ",".join(short_row(uid, 1, last_name="Smith, Jr.")),  # line 3: 12 fields
        ",".join([*short_row(uid, 2), "extra"]),  # line 4: 12 fields
        ",".join(short_row(uid, 3)[:-1]),  # line 5: 10 fields
        ",".join(short_row(uid, 4, last_name='"Smith, Jr."')),  # line 6: quoted, fine
    ]
    data = tmp_path / "short.csv"
    data.write_text("\n".join(lines) + "\n")

    code, output = run_import(str(data), "--pixel", PIXEL_ID, "--config", str(config_file))

    assert code == 1, output
    assert output.strip().splitlines()[-1] == "2 queued, 0 duplicate, 3 rejected"
    assert "field_count 3" in output
    with (tmp_path / "short.csv.rejected.csv").open() as f:
        rejected = list(csv.DictReader(f))
    assert [(r["line"], r["event_id"], r["problems"]) for r in rejected] == [
        ("3", "", "row: line 3: 12 fields, the header has 11"),
        ("4", "", "row: line 4: 12 fields, the header has 11"),
        ("5", "", "row: line 5: 10 fields, the header has 11"),
    ]
    sent = wait_for(lambda: (found := delivered_for(emulator, uid)) and len(found) >= 2 and found)
    assert sorted(e["custom_data"]["order_id"] for e in sent) == [
        f"{uid}short-0",
        f"{uid}short-4",
    ]
    assert all(e["custom_data"]["value"] == 12.5 for e in sent)


@pytest.mark.parametrize("fmt", ["csv", "csv-mapped"])
def test_a_row_of_the_wrong_width_is_one_problem_whatever_the_layout(
    tmp_path: Path, fmt: str
) -> None:
    path = tmp_path / "width.csv"
    path.write_text("event_name,event_time,email\nPurchase,1,a@b.c,x\nLead,2\nLead,3,d@e.f\n")
    with path.open("rb") as f:
        # As worker processes (--workers) receive them.
        rows = pickle.loads(pickle.dumps(list(read_rows(f, fmt))))
    assert [line for line, _ in rows] == [2, 3, 4]
    assert rows[2][1] == {"event_name": "Lead", "event_time": "3", "email": "d@e.f"}
    mapping = parse_mapping(
        '[[event]]\n[event.map]\nevent_name = "event_name"\nevent_time = "event_time"\n'
    )
    importer = Importer(
        pixel_id=PIXEL_ID,
        pixel=PixelSettings(access_token=Secret(env=TOKEN_ENV)),
        mapping=mapping if fmt == "csv-mapped" else None,
        action_source="system_generated",
    )
    now = time.time()
    for (line, row), count in zip(rows[:2], (4, 2), strict=True):
        [item] = importer.prepare(line, row, now)
        assert item.new_event is None
        assert [(p.code, p.field, p.message) for p in item.problems] == [
            ("field_count", "", f"line {line}: {count} fields, the header has 3")
        ]


def test_empty_cells_past_the_header_shift_nothing_and_are_left_out(tmp_path: Path) -> None:
    # A trailing comma on every line, as some exporters write them (an adversarial review).
    path = tmp_path / "trailing.csv"
    path.write_text("event_name,event_time,email\nPurchase,1,a@b.c,\nLead,2,d@e.f, ,\n")
    with path.open("rb") as f:
        rows = list(read_rows(f, "csv"))
    assert rows == [
        (2, {"event_name": "Purchase", "event_time": "1", "email": "a@b.c"}),
        (3, {"event_name": "Lead", "event_time": "2", "email": "d@e.f"}),
    ]


def test_the_importer_pickles_for_worker_processes() -> None:
    importer = Importer(
        pixel_id=PIXEL_ID,
        pixel=PixelSettings(access_token=Secret(env=TOKEN_ENV)),
        mapping=parse_mapping('[[event]]\n[event.set]\nevent_name = "Lead"\n'),
    )
    copy = pickle.loads(pickle.dumps(importer))
    now = time.time()
    [item] = copy.prepare(1, {"x": 1}, now)
    assert item.new_event is None
    assert {p.code for p in item.problems} >= {"missing_field"}


def test_a_mapping_file_reads_a_csv_of_any_layout(config_file: Path, tmp_path: Path) -> None:
    mapping = tmp_path / "pos.toml"
    mapping.write_text(
        """
[[event]]
[event.set]
event_name = "Purchase"
action_source = "physical_store"
custom_data.currency = "GBP"
[event.map]
event_time = "Sold"
user_data.email = '"Customer Mail"'  # a JMESPath quoted identifier
custom_data.value = { path = "Total", transform = "float" }
"""
    )
    sold = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() - 2 * DAY))
    data = tmp_path / "pos.csv"
    data.write_text(f'"Customer Mail",Total,Sold\nbuyer@example.com,12.00,{sold}\n,3,never\n')

    code, output = run_import(
        str(data),
        "--pixel",
        PIXEL_ID,
        "--config",
        str(config_file),
        "--mapping",
        str(mapping),
        "--dry-run",
    )

    assert code == 1, output
    assert output.strip().splitlines()[-1] == "1 would be queued, 1 rejected (dry run)"
    assert "invalid_value 1" in output  # the second row's time


def test_reading_rows_leaves_the_file_open_for_progress(tmp_path: Path) -> None:
    path = tmp_path / "one.csv"
    path.write_text("event_name,event_time\nPurchase,1\n")
    with path.open("rb") as f:
        assert len(list(read_rows(f, "csv"))) == 1
        assert f.tell() == path.stat().st_size  # still open: progress reads it at the end


def test_worker_processes_prepare_the_same_events(
    emulator: RunningEmulator, config_file: Path, tmp_path: Path, uid: str
) -> None:
    rows = [store_sale(uid, n) for n in range(5)] + [store_sale(uid, 9, value="x")]
    data = write_csv(tmp_path / "pooled.csv", rows)

    code, output = run_import(
        str(data), "--pixel", PIXEL_ID, "--config", str(config_file), "--workers", "2"
    )

    assert code == 1, output
    assert output.strip().splitlines()[-1] == "5 queued, 0 duplicate, 1 rejected"
    sent = wait_for(lambda: (found := delivered_for(emulator, uid)) and len(found) >= 5 and found)
    assert sorted(e["custom_data"]["order_id"] for e in sent) == [
        f"{uid}store-{n}" for n in range(5)
    ]


def test_a_row_past_metas_window_is_told_it_cannot_be_sent(tmp_path: Path) -> None:
    # Validation's advice, "drop the event or send it sooner", is no advice for a file.
    importer = Importer(pixel_id=PIXEL_ID, pixel=PixelSettings(access_token=Secret(env=TOKEN_ENV)))
    now = time.time()
    rows = [
        (
            2,
            store_sale(
                "old", 0, event_time="2020-03-01T10:00:00Z", action_source="system_generated"
            ),
        ),
        (3, store_sale("old", 1, age_days=70)),  # physical_store: 62 days
    ]
    told = {
        line: [p.message for p in item.problems if p.code == "event_too_old"]
        for line, row in rows
        for item in importer.prepare(line, row, now)
    }
    window = (
        "Meta accepts no event older than 7 days (62 for action_source physical_store, "
        "sales in a store), so this row cannot be sent"
    )
    assert told == {
        2: [f"event_time is more than 7 days in the past; {window}"],
        3: [f"event_time is more than 62 days in the past; {window}"],
    }


def test_a_dry_run_of_store_sales_asks_for_no_browser_keys() -> None:
    # A sale at the till has no user agent, fbp, fbc or buyer's IP to send.
    importer = Importer(pixel_id=PIXEL_ID, pixel=PixelSettings(access_token=Secret(env=TOKEN_ENV)))
    rows = [(n + 2, store_sale("till", n)) for n in range(20)]
    summary = importer.dry_run(rows, lambda *_: None, lambda _n: None)
    assert (summary.accepted, summary.rejected) == (20, 0)
    # What a till can have and these rows lack is still asked for.
    assert summary.quality is not None
    assert summary.quality.hints == ["100% of Purchase events lack a date of birth"]
