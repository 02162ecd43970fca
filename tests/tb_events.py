"""Reads TensorBoard event files back (TFRecord framing + tensorboardX's Event proto) for the tests."""

import pathlib
import struct

from tensorboardX.proto.event_pb2 import Event


def read_scalars(logdir: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of every scalar in every event file of `logdir`, in file order,
    honouring TensorBoard's purge events (a SessionLog.START at step s drops earlier events >= s)."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    files = sorted(pathlib.Path(logdir).glob("events.out.tfevents.*"), key=lambda path: path.stat().st_mtime_ns)
    assert files, f"no event file in {logdir}"
    for path in files:
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            record = data[offset + 12:offset + 12 + length]  # skip the length's crc
            offset += 12 + length + 4  # and the record's crc
            event = Event.FromString(record)
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                scalars = {tag: [(s, v) for s, v in rows if s < event.step] for tag, rows in scalars.items()}
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars
