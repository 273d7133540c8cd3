"""No leaks, no 500s: what the meter's web app shows, logs and refuses (issue #9, point 5).

The real web app (create_application) on a real ledger (SQLite, and the test
PostgreSQL where JGM_TEST_POSTGRES_URL is set); only the hub's answer to
"whose token is this?" is injected, as in test_usage_web.py.
"""

import csv
import io
import json
import logging
from datetime import timedelta
from types import SimpleNamespace
from urllib.parse import quote, unquote

import jsonschema
import pytest
import sqlalchemy as sa
import yaml

from jupyter_gpu_meter.ledger import Ledger, WriteBuffer
from jupyter_gpu_meter.pricing import Pricing
from jupyter_gpu_meter.sampler import GPUReading, Tick
from jupyter_gpu_meter.service.api import OPENAPI
from jupyter_gpu_meter.service.app import MeterService
from jupyter_gpu_meter.service.auth import READ_ALL_SCOPE
from jupyter_gpu_meter.service.logs import scrub_secrets
from jupyter_gpu_meter.service.state import MeterState, error_summary
from jupyter_gpu_meter.sessions import ManagedContainer
from tests.test_usage_web import (
    ACCESS,
    H100,
    NOW,
    KnownTokens,
    add_session,
    body,
    fetch,
    serve_app,
)

USERS = {
    "ada-token": {"kind": "user", "name": "ada", "scopes": [ACCESS]},
    "admin-token": {"kind": "user", "name": "admin", "admin": True, "scopes": [ACCESS]},
    "zoë-token": {"kind": "user", "name": "zoë", "scopes": [ACCESS]},
    "hanako-token": {"kind": "user", "name": "花子", "scopes": [ACCESS]},
    # a token of a user without access to the service: the hub knows it, we must refuse it
    "outsider-token": {"kind": "user", "name": "eve", "scopes": ["self", "read:users"]},
    # a token scoped down to the metrics alone, and a scraper that may see everyone's usage
    "scraper-token": {"kind": "service", "name": "prometheus", "scopes": ["read:metrics"]},
    "read-all-scraper-token": {
        "kind": "service",
        "name": "prometheus",
        "scopes": ["read:metrics", READ_ALL_SCOPE],
    },
}


class Tokens(KnownTokens):
    """KnownTokens whose hub is the dict above."""

    models = USERS


def ledger_url(kind, tmp_path, request):
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.sqlite"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(params=["sqlite", "postgresql"])
def meter(request, tmp_path):
    ledger = Ledger(ledger_url(request.param, tmp_path, request))
    ledger.upgrade()
    pricing = Pricing(prices={H100: "2.49"}, currency="EUR")
    add_session(ledger, pricing, "ada", NOW - timedelta(days=3), NOW - timedelta(days=2))
    add_session(ledger, pricing, "zoë", NOW - timedelta(days=3), NOW - timedelta(days=2))
    add_session(ledger, pricing, "花子", NOW - timedelta(days=3), NOW - timedelta(days=2))
    running = add_session(ledger, pricing, "ada", NOW - timedelta(hours=1), server="train")
    gpus = ("GPU-A",)
    # the meter's own state: ada's running server, one GPU sample
    state = MeterState(
        running={
            running: ManagedContainer(
                running, "ada", "train", gpus, H100, "gpu-1", None, True, NOW, None, None
            )
        }
    )
    state.sampled(
        Tick(NOW, (GPUReading("GPU-A", 0, H100, 81, 10 << 30, 80 << 30, 300.0, 60),), (), 0.004)
    )
    meter = SimpleNamespace(
        ledger=ledger,
        pricing=pricing,
        state=state,
        health=lambda: {"gpu_sampling": "off", "pending_writes": 0},
    )
    yield meter
    ledger.close()


@pytest.fixture
async def app(meter):
    server, app = serve_app(meter, hub_auth=Tokens.for_tests(access_scopes={ACCESS}))
    yield app
    server.stop()


# --- api/health: error classes, never the SQL or its parameters --------------------------


def failed_write(tmp_path):
    """A buffer whose ledger write failed for real, with data in its SQL parameters.

    The database is locked by another writer: a transient failure, so the
    write waits in the buffer and its error is the buffer's last.
    """
    path = tmp_path / "locked.sqlite"
    ledger = Ledger(f"sqlite:///{path}")
    ledger.upgrade()
    with ledger.engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE notes (name TEXT)"))
    other = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    mine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})

    def write():
        with mine.begin() as connection:
            connection.execute(sa.text("INSERT INTO notes VALUES (:name)"), {"name": "s3cret-user"})

    buffer = WriteBuffer()
    buffer.add(write)
    with other.connect() as connection:
        connection.exec_driver_sql("BEGIN EXCLUSIVE")
        buffer.flush()
        connection.rollback()
    for engine in (other, mine):
        engine.dispose()
    ledger.close()
    assert len(buffer) == 1  # kept for the next flush
    return buffer


def test_a_database_error_is_summed_up_by_its_classes_and_code(tmp_path):
    error = failed_write(tmp_path).last_error
    assert "s3cret-user" in str(error) and "INSERT INTO" in str(error)  # what must not leak
    assert error_summary(error) == (
        "sqlalchemy.exc.OperationalError (sqlite3.OperationalError SQLITE_BUSY)"
    )
    assert error_summary(None) == ""
    assert error_summary(OSError(28, "No space left on /srv/ledger/ada")) == "OSError"


async def test_postgres_errors_show_their_sqlstate_not_their_message(postgres_url):
    ledger = Ledger(postgres_url)
    try:
        with pytest.raises(sa.exc.DBAPIError) as raised:
            with ledger.engine.begin() as connection:
                connection.execute(sa.text("SELECT CAST(:v AS integer)"), {"v": "s3cret-user"})
    finally:
        ledger.close()
    assert "s3cret-user" in str(raised.value)
    assert error_summary(raised.value) == (
        "sqlalchemy.exc.DataError (psycopg.errors.InvalidTextRepresentation SQLSTATE 22P02)"
    )


def test_health_shows_the_class_of_the_last_write_error_and_none_of_its_data(tmp_path):
    meter = MeterService()
    meter.buffer = failed_write(tmp_path)
    meter.sampler, meter.sampler_problem = None, ""
    meter.state = MeterState()
    health = meter.health()
    assert health["last_write_error"].startswith("sqlalchemy.exc.OperationalError")
    assert "s3cret" not in json.dumps(health) and "INSERT" not in json.dumps(health)
    # as the API's document promises, which the fuzz test holds every answer to
    document = yaml.safe_load(OPENAPI.read_text())
    response = document["paths"]["/api/health"]["get"]["responses"]["200"]
    schema = response["content"]["application/json"]["schema"]
    jsonschema.validate(health, schema)
    leaky = {**health, "last_write_error": str(meter.buffer.last_error)}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(leaky, schema)


# --- the request log: no OAuth codes, states or tokens -------------------------------------


def test_secrets_in_query_strings_are_scrubbed_and_the_rest_kept():
    assert scrub_secrets(
        "GET /services/gpu-meter/oauth_callback?code=abc123&state=eyJ9&next=%2Fx (1.2.3.4)"
    ) == ("GET /services/gpu-meter/oauth_callback?code=[secret]&state=[secret]&next=%2Fx (1.2.3.4)")
    assert scrub_secrets("/api/usage?since=2026-11-01&token=abc&TOKEN=def&_xsrf=x") == (
        "/api/usage?since=2026-11-01&token=[secret]&TOKEN=[secret]&_xsrf=[secret]"
    )
    assert scrub_secrets("/api/usage?user=token&mytoken=1&access_token=a;b") == (
        "/api/usage?user=token&mytoken=1&access_token=[secret]"
    )
    assert scrub_secrets("/api/usage?code") == "/api/usage?code"
    assert scrub_secrets("no query here") == "no query here"


async def test_the_request_log_has_no_tokens_codes_or_states(app, caplog):
    caplog.set_level(logging.DEBUG)
    await fetch(app, "api/usage?since=2026-11-01&_xsrf=the-xsrf-123", "ada-token")
    # a token in the URL is not taken (the hub's default), but it is in the URL all the same
    refused = await fetch(app, "api/usage?token=ada-token&since=2026-11-01", ok=False)
    assert refused.code == 403
    callback = "oauth_callback?code=the-oauth-code-456&state=the-state-789"
    assert (await fetch(app, callback, ok=False)).code == 403  # no state cookie to match
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "200 GET /services/gpu-meter/api/usage?since=2026-11-01&_xsrf=[secret]" in logged
    assert "403 GET /services/gpu-meter/api/usage?token=[secret]&since=2026-11-01" in logged
    assert "403 GET /services/gpu-meter/oauth_callback?code=[secret]&state=[secret]" in logged
    for secret in ("ada-token", "the-xsrf-123", "the-oauth-code-456", "the-state-789"):
        assert secret not in logged


# --- hub_scopes: explicit, whatever the environment says -----------------------------------


async def test_without_the_hubs_environment_a_token_needs_the_access_scope(meter, monkeypatch):
    for name in (
        "JUPYTERHUB_SERVICE_NAME",
        "JUPYTERHUB_OAUTH_ACCESS_SCOPES",
        "JUPYTERHUB_OAUTH_SCOPES",
    ):
        monkeypatch.delenv(name, raising=False)
    auth = Tokens.for_tests()  # access_scopes from the environment: none
    assert auth.access_scopes == set()
    server, app = serve_app(meter, hub_auth=auth)
    try:
        for path in ("api/usage", "api/gpus", "api/export.csv", ""):
            response = await fetch(app, path, "outsider-token", ok=False)
            assert response.code == 403, path
            assert "eve may not use this: it needs the scope " + ACCESS in response.body.decode()
        assert body(await fetch(app, "api/usage", "ada-token"))["user"] == "ada"
    finally:
        server.stop()


async def test_the_access_scope_names_the_service_the_hub_says_we_are(meter, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_SERVICE_NAME", "gpu-meter-staging")
    server, app = serve_app(meter, hub_auth=Tokens.for_tests(access_scopes=set()))
    try:
        response = await fetch(app, "api/usage", "ada-token", ok=False)
        assert response.code == 403
        assert "access:services!service=gpu-meter-staging" in body(response)["message"]
    finally:
        server.stop()


# --- /metrics: user names only for those who may see everyone's usage ----------------------


async def test_a_scraper_with_read_metrics_alone_gets_no_user_names(app):
    text = (await fetch(app, "metrics", "scraper-token")).body.decode()
    gpu = f'index="0",model="{H100}",node="",uuid="GPU-A"'
    assert f"jupyter_gpu_meter_gpu_allocated{{{gpu}}} 1.0" in text
    assert f"jupyter_gpu_meter_gpu_utilization_ratio{{{gpu}}} 0.81" in text
    assert 'jupyter_gpu_meter_running_sessions{node=""} 1.0' in text
    assert "jupyter_gpu_meter_ledger_pending_writes 0.0" in text
    for user_series in ("user_gpu_seconds", "user_charges", "gpu_holder_info", "user="):
        assert user_series not in text
    for name in ("ada", "zoë", "花子", "train"):
        assert name not in text


async def test_a_scraper_with_the_read_all_scope_gets_the_per_user_series(app):
    text = (await fetch(app, "metrics", "read-all-scraper-token")).body.decode()
    assert 'jupyter_gpu_meter_user_gpu_seconds_total{user="ada"} 90000.0' in text
    assert 'jupyter_gpu_meter_user_gpu_seconds_total{user="花子"} 86400.0' in text
    assert 'jupyter_gpu_meter_user_charges_total{currency="EUR",user="zoë"}' in text
    assert (
        'jupyter_gpu_meter_gpu_holder_info{node="",server="train",user="ada",uuid="GPU-A"} 1.0'
        in text
    )
    assert 'jupyter_gpu_meter_running_sessions{node=""} 1.0' in text


# --- CSV: no formulas, whatever a cell starts with -------------------------------------------


@pytest.mark.parametrize("meter", ["sqlite"], indirect=True)
async def test_export_cells_never_start_a_formula(app):
    ledger, pricing = app.meter.ledger, app.meter.pricing
    day = NOW - timedelta(days=1)
    names = ["=1+1", "+1", "-1", "@SUM(A1)", "\t=1+1", "\r=1+1"]
    for i, name in enumerate(names):
        add_session(ledger, pricing, name, day + timedelta(minutes=i), day + timedelta(hours=1))
    response = await fetch(app, "api/export.csv?since=2026-11-19", "admin-token")
    users = [row["user"] for row in csv.DictReader(io.StringIO(response.body.decode()))]
    assert sorted(user for user in users if user != "ada") == sorted("'" + n for n in names)


# --- ranges, offsets, names: a 400 that says what is allowed, or an answer ------------------


@pytest.mark.parametrize(
    "query, message",
    [
        ("since=0000-01-01", "since='0000-01-01' is not an ISO 8601 date or time"),
        ("since=99999-01-01", "since='99999-01-01' is not an ISO 8601 date or time"),
        ("until=10000-01-01T00:00:00Z", "is not an ISO 8601 date or time"),
        ("since=0001-01-01T00:00:00%2B01:00", "since='0001-01-01T00:00:00+01:00' is not a time"),
        ("until=9999-12-31T23:59:59-01:00", "until='9999-12-31T23:59:59-01:00' is not a time"),
        ("offset=" + "1" * 30, "offset='" + "1" * 30 + "' is not a whole number from 0 to"),
        ("offset=-1", "offset='-1' is not a whole number from 0 to 2147483647"),
        ("offset=2147483648", "is not a whole number from 0 to 2147483647"),
        ("limit=" + "9" * 5000, "is not a whole number from 0 to 1000"),
        ("limit=-1", "limit='-1' is not a whole number from 0 to 1000"),
    ],
)
@pytest.mark.parametrize("path", ["api/usage", "api/users", "api/export.csv"])
async def test_out_of_range_arguments_are_a_400_that_says_what_is_allowed(
    app, path, query, message
):
    response = await fetch(app, f"{path}?{query}", "admin-token", ok=False)
    assert response.code == 400, response.body
    assert message in body(response)["message"]


@pytest.mark.parametrize(
    "query",
    [
        "since=0001-01-01",
        "until=0001-01-02",
        "since=0001-01-01&until=9999-12-31T23:59:59.999999Z",
        "since=9999-12-31T23:59:59.999999Z",
        "until=9999-12-31",
        "offset=2147483647&limit=1000",
        "since=2026-11-01%00",  # Tornado drops control characters from arguments
        "since=2026-11-17T00:00:00%2B14:00&until=2026-11-18T00:00:00-12:00",
    ],
)
@pytest.mark.parametrize("path", ["api/usage", "api/users", "api/export.csv", "", "admin"])
async def test_extreme_but_valid_arguments_work(app, path, query):
    response = await fetch(app, f"{path}?{query}", "admin-token")
    assert response.code == 200


async def test_the_first_and_last_day_datetime_knows_give_the_right_totals(app):
    everything = body(await fetch(app, "api/usage?since=0001-01-01&until=9999-12-31", "ada-token"))
    assert everything["totals"] == everything["all_time"]
    assert everything["since"] == "0001-01-01T00:00:00Z"
    nothing = body(await fetch(app, "api/usage?since=9999-12-31", "ada-token"))
    assert nothing["totals"]["sessions"] == 0 and nothing["sessions"]["items"] == []
    far = body(await fetch(app, "api/usage?offset=2147483647", "ada-token"))
    assert far["sessions"]["items"] == [] and far["sessions"]["total"] == 2


def disposition(response):
    """(the ASCII filename, the UTF-8 filename*) of a Content-Disposition (RFC 6266)."""
    header = response.headers["Content-Disposition"]
    parts = dict(part.strip().split("=", 1) for part in header.split(";")[1:])
    assert header.startswith("attachment;") and parts["filename"].startswith('"')
    charset, language, encoded = parts["filename*"].split("'", 2)
    assert charset == "UTF-8" and language == ""
    plain = parts["filename"].strip('"')
    assert plain.isascii() and plain.isprintable()
    return plain, unquote(encoded, errors="strict")


@pytest.mark.parametrize(
    "token, query, plain, utf8",
    [
        ("ada-token", "", "gpu-usage-ada-start-now.csv", "gpu-usage-ada-start-now.csv"),
        (
            "zoë-token",
            "since=2026-11-01",
            "gpu-usage-zo_-2026-11-01-now.csv",
            "gpu-usage-zoë-2026-11-01-now.csv",
        ),
        ("hanako-token", "", "gpu-usage-__-start-now.csv", "gpu-usage-花子-start-now.csv"),
        ("admin-token", "user=花子", "gpu-usage-__-start-now.csv", "gpu-usage-花子-start-now.csv"),
        (
            "admin-token",
            "since=2026-11-01T00:00:00%2B01:00&until=" + quote("2026-12-01T00:00Z"),
            "gpu-usage-all-2026-11-01T00_00_00_01_00-2026-12-01T00_00Z.csv",
            "gpu-usage-all-2026-11-01T00_00_00_01_00-2026-12-01T00_00Z.csv",
        ),
        (  # no way out of the quotes, no path
            "admin-token",
            "user=" + quote('a"; filename=x.exe/../'),
            "gpu-usage-a___filename_x.exe_.._-start-now.csv",
            "gpu-usage-a___filename_x.exe_.._-start-now.csv",
        ),
    ],
)
async def test_export_filenames_are_ascii_with_the_utf8_name_beside(app, token, query, plain, utf8):
    response = await fetch(app, "api/export.csv?" + query, token)
    got_plain, got_utf8 = disposition(response)
    assert (got_plain, got_utf8) == (plain, utf8)
