"""Reads a citypop topic the way README's Python example does, with fastavro, and
prints every message as one JSON object a line, like `Interop.java read`:

    python tests/interop/read.py <bootstrap> <topic> <schema dir>

`occurred_at` is printed as microseconds since the epoch. Exits 1 if a value cannot
be decoded (its line then holds "error")."""

import glob
import io
import json
import sys
import time
from datetime import datetime, timedelta, timezone

from fastavro import parse_schema, schemaless_reader
from fastavro.schema import fingerprint, to_parsing_canonical_form
from kafka import KafkaConsumer, TopicPartition

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def decoder(schema_dir):
    # As in README: every published version a writer, the newest the reader.
    versions = [json.load(open(p)) for p in sorted(glob.glob(f"{schema_dir}/*.avsc"))]
    writers = {
        bytes.fromhex(fingerprint(to_parsing_canonical_form(s), "CRC-64-AVRO")): parse_schema(s)
        for s in versions
    }
    reader = parse_schema(versions[-1])

    def decode(value: bytes) -> dict:
        if value[:2] != b"\xc3\x01":
            raise ValueError("not Avro single-object encoded")
        writer = writers[value[2:10]]  # KeyError: a version you do not have yet
        return schemaless_reader(io.BytesIO(value[10:]), writer, reader)

    return decode


def main(bootstrap, topic, schema_dir):
    decode = decoder(schema_dir)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    start = consumer.beginning_offsets(partitions)
    remaining = {tp: end for tp, end in consumer.end_offsets(partitions).items() if end > start[tp]}
    deadline = time.monotonic() + 120
    failures = 0
    while remaining:
        if time.monotonic() > deadline:
            sys.exit(f"not all messages read within 120 s: {remaining}")
        for tp, messages in consumer.poll(timeout_ms=500).items():
            for message in messages:
                if tp not in remaining or message.offset >= remaining[tp]:
                    continue
                line = {
                    "partition": message.partition,
                    "offset": message.offset,
                    "key": None if message.key is None else message.key.decode(),
                    "headers": {k: None if v is None else v.decode() for k, v in message.headers},
                }
                if message.value is None:
                    line["value"] = None
                else:
                    try:
                        value = decode(message.value)
                        value["occurred_at"] = (value["occurred_at"] - EPOCH) // timedelta(microseconds=1)
                        line["value"] = value
                        line["writer_fingerprint"] = message.value[2:10].hex()
                    except Exception as e:  # noqa: BLE001 - reported, not raised
                        failures += 1
                        line["error"] = repr(e)
                print(json.dumps(line, ensure_ascii=False), flush=True)
                if message.offset + 1 >= remaining[tp]:
                    del remaining[tp]
    consumer.close()
    if failures:
        sys.exit(f"{failures} messages could not be decoded")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
