"""Read what Tally keeps: the raw events, archived as hour-partitioned Parquet, and the batch
views, through their published manifest. A small helper for notebooks, not a client library.

    import tally_data
    tally = tally_data.open()                      # TALLY_DATA, or ./tally-data
    tally.hours()                                  # the archived (date, hour) partitions
    events = tally.events("2026-12-05T00:00Z", "2026-12-06T00:00Z").collect()   # Polars
    tally.duckdb("2026-12-05T00:00Z", "2026-12-06T00:00Z").sql("select count(*) from events")
    states = tally.view("events_by_type")          # a view's batch states, decoded

TALLY_DATA is Tally's object store: a local folder (the data directory of `tally up`, or its
`objects/`) or `s3://bucket/prefix`. For S3 the usual variables apply: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION, and AWS_ENDPOINT_URL for an S3-compatible server.
"""

import datetime as dt
import json
import os
import struct

import datasketches
import duckdb
import polars as pl
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

__all__ = ["open", "Tally", "decode_state"]

RAW = "raw"
MANIFESTS = "manifests"
_TIME = pl.Datetime("ms", "UTC")
# The columns every archived file of a stream has (tags add their own), so that a stream
# with nothing archived yet reads as an empty frame of them.
_BASE_SCHEMA = {
    "events": {
        "event_id": pl.String, "tenant": pl.String, "event_type": pl.String,
        "user_id": pl.String, "source": pl.String, "ts": _TIME, "received_at": _TIME,
        "log_partition": pl.UInt32, "log_offset": pl.UInt64,
    },
    "rejected": {
        "tenant": pl.String, "source": pl.String, "received_at": _TIME,
        "request_index": pl.UInt64, "reasons": pl.List(pl.String), "codes": pl.List(pl.String),
        "payload": pl.String, "log_partition": pl.UInt32, "log_offset": pl.UInt64,
    },
}


def open(location=None):
    """Tally's data at `location`, or at TALLY_DATA, or at ./tally-data: a data directory, its
    `objects/` folder, or `s3://bucket/prefix`."""
    location = location or os.environ.get("TALLY_DATA") or "tally-data"
    if "://" not in location:
        location = _object_store_in(location)
    return Tally(location)


def _object_store_in(folder):
    """The object store folder `folder` names: itself, or the `objects/` of a data directory."""
    holds = lambda path, name: os.path.isdir(os.path.join(path, name))
    if holds(folder, RAW) or holds(folder, MANIFESTS):
        return folder
    if holds(folder, "objects"):
        return os.path.join(folder, "objects")
    raise FileNotFoundError(
        f"no Tally data in {os.path.abspath(folder)}: set TALLY_DATA to the data directory of "
        "`tally up` (or its objects/ folder), or to s3://bucket/prefix; raw events appear once "
        "the archiver has written its first file (batch.roll_secs after the first event)"
    )


class Tally:
    """One Tally object store: raw partitions, manifests and batch-view objects."""

    def __init__(self, location):
        self.location = location.rstrip("/")
        if self.location.startswith("s3://"):
            endpoint = os.environ.get("AWS_ENDPOINT_URL")
            self.fs = pafs.S3FileSystem(
                access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
                secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
                region=os.environ.get("AWS_REGION", "us-east-1"),
                endpoint_override=endpoint.split("://", 1)[-1] if endpoint else None,
                scheme="http" if endpoint and endpoint.startswith("http://") else "https",
            )
            self.root = self.location[len("s3://"):]
            self.storage_options = {
                key: value
                for key, value in {
                    "aws_access_key_id": os.environ.get("AWS_ACCESS_KEY_ID"),
                    "aws_secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY"),
                    "aws_region": os.environ.get("AWS_REGION", "us-east-1"),
                    "aws_endpoint_url": endpoint,
                    "aws_allow_http": "true" if endpoint and endpoint.startswith("http://") else None,
                }.items()
                if value
            }
        else:
            self.fs = pafs.LocalFileSystem()
            self.root = os.path.abspath(self.location)
            self.storage_options = None

    def __repr__(self):
        return f"Tally({self.location!r})"

    # Raw events -------------------------------------------------------------------------

    def hours(self, stream="events"):
        """The archived hour partitions of a stream, as sorted UTC datetimes."""
        selector = pafs.FileSelector(f"{self.root}/{RAW}/{stream}", allow_not_found=True)
        found = set()
        for info in self.fs.get_file_info(selector):
            if info.type == pafs.FileType.Directory and "/dt=" in info.path:
                for hour in self.fs.get_file_info(pafs.FileSelector(info.path)):
                    name = hour.path.rsplit("/", 1)[-1]
                    if name.startswith("hour="):
                        day = info.path.rsplit("dt=", 1)[-1]
                        found.add(dt.datetime.fromisoformat(f"{day}T{name[5:]}:00+00:00"))
        return sorted(found)

    def events(self, start, end, stream="events"):
        """A Polars LazyFrame of the raw events with `ts` in [start, end): only the hour
        partitions in range are read, and files archived with fewer tag columns get nulls."""
        start, end = _instant(start), _instant(end)
        files = self._files(stream, start, end)
        if not files:
            return pl.LazyFrame(schema=_BASE_SCHEMA[stream])
        time = "received_at" if stream == "rejected" else "ts"
        return pl.scan_parquet(
            files,
            schema=self._union_schema(files),
            hive_partitioning=True,
            missing_columns="insert",
            storage_options=self.storage_options,
        ).filter((pl.col(time) >= start) & (pl.col(time) < end))

    def _union_schema(self, files):
        """Every column of `files`, from their footers only: a tag first seen in a later
        file is a column too."""
        schema = {}
        for url in files:
            footer = pq.read_schema(url.split("://", 1)[-1], filesystem=self.fs)
            for name, dtype in pl.from_arrow(footer.empty_table()).schema.items():
                schema.setdefault(name, dtype)
        return schema

    def duckdb(self, start, end, stream="events"):
        """A DuckDB connection with a table `events` (or `rejected`): the raw events with
        `ts` in [start, end), from the hour partitions in range only."""
        start, end = _instant(start), _instant(end)
        files = [path.split("://", 1)[-1] for path in self._files(stream, start, end)]
        connection = duckdb.connect()
        if not files:
            connection.sql(f"create view {stream} as select null as event_id where false")
            return connection
        dataset = ds.dataset(files, filesystem=self.fs, format="parquet", partitioning="hive")
        connection.register(f"{stream}_files", dataset)
        time = "received_at" if stream == "rejected" else "ts"
        connection.sql(
            f"create view {stream} as select * from {stream}_files "
            f"where {time} >= '{start.isoformat()}'::timestamptz and {time} < '{end.isoformat()}'::timestamptz"
        )
        return connection

    def _files(self, stream, start, end):
        """The Parquet files of the hour partitions that overlap [start, end)."""
        files = []
        hour = start.replace(minute=0, second=0, microsecond=0)
        while hour < end:
            folder = f"{self.root}/{RAW}/{stream}/dt={hour:%Y-%m-%d}/hour={hour:%H}"
            selector = pafs.FileSelector(folder, allow_not_found=True)
            for info in self.fs.get_file_info(selector):
                if info.path.endswith(".parquet"):
                    files.append(self._url(info.path))
            hour += dt.timedelta(hours=1)
        return sorted(files)

    # Batch views ------------------------------------------------------------------------

    def manifest(self, generation=None):
        """The published manifest (what `manifests/CURRENT` points at), or a named
        generation of it; None when the batch layer has published none yet (it recomputes an
        hour once `ingest.max_lateness_secs` has passed after it, a day by default). A
        manifest is written whole before it is published, so reading it through the pointer
        never shows a half-written version."""
        if generation is None:
            current = f"{self.root}/{MANIFESTS}/CURRENT"
            if self.fs.get_file_info(current).type == pafs.FileType.NotFound:
                return None
            path = self._read(f"{MANIFESTS}/CURRENT").decode().strip()
        else:
            path = f"{MANIFESTS}/manifest-{generation:010}.json"
        return json.loads(self._read(path))

    def manifests(self):
        """Every manifest generation still kept, newest first."""
        selector = pafs.FileSelector(f"{self.root}/{MANIFESTS}", allow_not_found=True)
        generations = [
            int(info.path.rsplit("manifest-", 1)[-1].split(".")[0])
            for info in self.fs.get_file_info(selector)
            if "manifest-" in info.path
        ]
        return sorted(generations, reverse=True)

    def view(self, name, tenant="demo", logic_version=None):
        """The batch states of a view, one row per bucket and dimension values, with each
        measure decoded: `count`, `sum(f)`, `min(f)`, `max(f)`, and the sketches of `uniq(f)`
        (HLL) and `quantiles(f)` (KLL) as DataSketches objects.

        At the view's current logic version from the published manifest; or, with
        `logic_version`, from the newest kept manifest whose hours are at that version."""
        view_id = f"{tenant}/{name}"
        manifest = self.manifest()
        if manifest is None:
            raise LookupError("no batch views are published yet (see Tally.manifest)")
        if logic_version is not None:
            manifest = next(
                (
                    m
                    for m in map(self.manifest, self.manifests())
                    if view_id in m["views"]
                    and any(h["logic_version"] == logic_version for h in m["views"][view_id]["hours"].values())
                ),
                None,
            )
            if manifest is None:
                raise LookupError(f"no kept manifest holds {view_id} at logic version {logic_version}")
        entry = manifest["views"][view_id]
        version = logic_version or entry["current_version"]
        spec = entry["versions"][str(version)]
        frames = []
        for hour in entry["hours"].values():
            if hour["logic_version"] == version and hour["object"]:
                frames.append(pl.read_parquet(self._read(hour["object"])))
        if not frames:
            return pl.DataFrame()
        states = pl.concat(frames, how="diagonal_relaxed")
        decoded = [decode_state(bytes(state), spec["measures"]) for state in states["state"]]
        measures = {name: [row[name] for row in decoded] for name in spec["measures"]}
        return states.drop("state").with_columns(
            pl.Series(name, values, dtype=pl.Object if _is_sketch(name) else None)
            for name, values in measures.items()
        )

    # Objects ----------------------------------------------------------------------------

    def _read(self, path):
        with self.fs.open_input_stream(f"{self.root}/{path}") as stream:
            return stream.read()

    def _url(self, path):
        return f"s3://{path}" if self.location.startswith("s3://") else path


def decode_state(data, measures):
    """Tally's state encoding (version 1): a version byte, the count, the number of measures,
    then each measure as a tag and its payload, sketches in their DataSketches serialization.
    Returns {"count": n, measure name: value or sketch}."""
    reader = _Reader(data)
    if reader.byte() != 1:
        raise ValueError("unknown state encoding version")
    decoded = {"count": reader.varint()}
    count = reader.varint()
    if count != len(measures) - measures.count("count"):
        raise ValueError(f"the state holds {count} measures, the spec names {measures}")
    for name in (m for m in measures if m != "count"):
        tag = reader.byte()
        if tag == 1:
            micros = int.from_bytes(reader.take(16), "little", signed=True)
            reader.varint()
            decoded[name] = micros / 1_000_000
        elif tag in (2, 3):
            decoded[name] = struct.unpack("<d", reader.take(8))[0] if reader.byte() else None
        elif tag == 4:
            decoded[name] = datasketches.hll_sketch.deserialize(reader.sized())
        elif tag == 5:
            decoded[name] = datasketches.kll_doubles_sketch.deserialize(reader.sized())
        else:
            raise ValueError(f"unknown measure tag {tag}")
    if reader.at != len(data):
        raise ValueError("trailing bytes after the state")
    return decoded


class _Reader:
    def __init__(self, data):
        self.data, self.at = data, 0

    def take(self, n):
        if self.at + n > len(self.data):
            raise ValueError("truncated state")
        self.at += n
        return self.data[self.at - n : self.at]

    def byte(self):
        return self.take(1)[0]

    def varint(self):
        value, shift = 0, 0
        while True:
            byte = self.byte()
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7

    def sized(self):
        return bytes(self.take(self.varint()))


def _is_sketch(measure):
    return measure.startswith(("uniq(", "quantiles("))


def _instant(value):
    """A UTC datetime from a datetime, an RFC 3339 string or epoch milliseconds."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value / 1000, dt.timezone.utc)
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
