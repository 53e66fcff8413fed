"""Protocol fuzzing: mutated and random messages to every RPC of a genserve server, on each gRPC
transport. No call may end INTERNAL or UNKNOWN, stall, or leave the server unable to serve.

    python -m benchmarks.fuzz --transport both --messages 10000 --seed 0   # ~1 min per transport

Every method of ``genserve.v1.GenerationService``, ``inference.GRPCInferenceService`` and
``grpc.health.v1.Health`` (but the endless ``Watch``), plus a method no service has, is called with
raw bytes (no client-side serialization): valid requests built from the served models, messages
filled with random values of the right types, structured mutations (extreme or NaN numbers,
undefined enum values, huge strings, tensors whose bytes disagree with their shape, contract
mistakes of KServe's ModelInfer) and byte mutations of serialized valid requests (bit flips,
truncation, splices, wrong wire types, fields repeated thousands of times, nested groups,
impossible lengths, random bytes, messages over the server's size limit).

One case in ten also carries odd metadata (request ids, tokens, binary headers, some over gRPC's
8 KiB header limit). Case ``i`` of a run is drawn from ``random.Random(seed * 1_000_003 + i)``
alone, so a failure is replayed with ``--case i``. A call fails the run (``judge``, by kind) when it
ends INTERNAL, UNKNOWN, CANCELLED or DATA_LOSS (status); when a method that runs no model, or a
request that does not parse, reaches its deadline (stall); when a valid request does not succeed
(valid); when a ModelStreamInfer stream of parseable requests ends without an answer to each
(stream); when the client gets no status because its details passed the metadata limit (details);
or when it fails UNAVAILABLE or on another call's oversized headers (connection). A work call cut by
its deadline is counted, not failed. A health probe runs beside the calls (a probe slower than its
deadline is a stall), and after the run a valid Generate and ModelInfer must succeed, the process
must be alive and its log free of tracebacks.

Each run writes a new folder ``results/runs/<date>-fuzz[-k]/``: ``fuzz.json`` (counts per transport
x method x status, per kind of case, failures with their case numbers, the environment),
``counts.csv`` and each server's log.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import io
import json
import math
import random
import struct
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as grpc_health
from PIL import Image as PILImage

from benchmarks import report as report_
from genserve import images
from genserve.client import GenserveClient
from genserve.serving import convert, kserve
from genserve.serving.config import MAX_MESSAGE_BYTES
from genserve.serving.domain import ModelInfo
from genserve.serving.servicer import GenerationServicer
from genserve.signature import ModelKind

ROOT = Path(__file__).resolve().parent.parent
DEADLINE_S = 10.0  # a call that runs no model and passes this has stalled
WORK_DEADLINE_S = 5.0  # calls that run models: past this the server cancels the work (not a failure)
WORK_TIMEOUT_MS = 3000  # the valid requests' own timeout_ms (KServe: parameter timeout)
PROBE_EVERY_S, PROBE_DEADLINE_S = 0.25, 5.0
CLIENT_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
# Statuses a fuzzed call may end with; any other is a failure.
ACCEPTABLE = frozenset(
    (
        "OK",
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "RESOURCE_EXHAUSTED",
        "OUT_OF_RANGE",
        "FAILED_PRECONDITION",
        "UNIMPLEMENTED",
        "DEADLINE_EXCEEDED",
    )
)
UNKNOWN_METHODS = ("/genserve.v1.GenerationService/NoSuchMethod", "/no.such.Service/Call")
HEADER_LIMIT = 8192 - 512  # gRPC's default limit on a call's headers, less its own (path, authority, ...)


# --- Methods -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    path: str  # "/package.Service/Name"
    name: str
    request: Descriptor
    client_streaming: bool = False
    server_streaming: bool = False
    work: bool = False  # runs models: may legitimately take until its deadline
    implemented: bool = True  # False: a valid request is answered UNIMPLEMENTED

    @property
    def deadline(self) -> float:
        return WORK_DEADLINE_S if self.work else DEADLINE_S


def _method(service: str, m: MethodDescriptor, work: tuple[str, ...], implemented: bool = True) -> Method:
    return Method(
        f"/{service}/{m.name}",
        m.name,
        m.input_type,
        m.client_streaming,
        m.server_streaming,
        m.name in work,
        implemented,
    )


def all_methods() -> list[Method]:
    """Every method the server registers (Health.Watch aside: it never ends), and unknown ones."""
    gen, inf = convert.SERVICE_DESCRIPTOR, kserve.SERVICE_DESCRIPTOR
    health = health_pb2.DESCRIPTOR.services_by_name["Health"]
    methods = [_method(gen.full_name, m, GenerationServicer.WORK_METHODS) for m in gen.methods]
    overridden = vars(kserve.InferenceServicer)
    methods += [
        _method(inf.full_name, m, kserve.InferenceServicer.WORK_METHODS, m.name in overridden) for m in inf.methods
    ]
    served = vars(grpc_health.HealthServicer)  # the server's: ``List`` is the generated UNIMPLEMENTED
    methods += [_method(health.full_name, m, (), m.name in served) for m in health.methods if m.name != "Watch"]
    empty = gen.methods_by_name["ListModels"].input_type
    methods += [Method(path, path, empty, implemented=False) for path in UNKNOWN_METHODS]
    return methods


def weight(method: Method) -> float:
    """Share of the cases: the methods that decode tensors and images get the most."""
    if method.path in UNKNOWN_METHODS:
        return 0.5
    return {"Generate": 6, "GenerateStream": 3, "Translate": 6, "ModelInfer": 8, "ModelStreamInfer": 4}.get(
        method.name, 1
    )


_CLASSES: dict[str, type[Message]] = {}


def message_class(descriptor: Descriptor) -> type[Message]:
    cls = _CLASSES.get(descriptor.full_name)
    if cls is None:
        cls = _CLASSES[descriptor.full_name] = message_factory.GetMessageClass(descriptor)
    return cls


def new(full_name: str, **fields) -> Message:
    return message_class(descriptor_pool.Default().FindMessageTypeByName(full_name))(**fields)


def parses(method: Method, payload: bytes) -> bool:
    try:
        message_class(method.request).FromString(payload)
    except DecodeError:
        return False
    return True


# --- Valid requests, from the served models ------------------------------------------------------


class Corpus:
    """Valid requests for each method, drawn from ``rng``; small work only (1-2 images, 1-2 steps)."""

    def __init__(self, infos: list[ModelInfo]):
        self.infos = sorted(infos, key=lambda i: i.name)
        self.generators = [i for i in self.infos if i.kind is not ModelKind.TRANSLATOR]
        self.translators = [i for i in self.infos if i.kind is ModelKind.TRANSLATOR]
        self.likelihoods = [i for i in self.infos if i.likelihood]

    def valid(self, method: Method, rng: random.Random) -> list[Message]:
        """The messages of one valid call (one, but for request-streaming methods)."""
        name = method.name
        if name == "Generate":
            return [self.generate(rng)]
        if name == "GenerateStream":
            return [
                new("genserve.v1.GenerateStreamRequest", request=self.generate(rng), preview_every=rng.choice((0, 1)))
            ]
        if name == "Translate":
            return [self.translate(rng)]
        if name == "LogLikelihood":  # no valid call without a model that has a likelihood
            return [self.likelihood(rng)] if self.likelihoods else []
        if name == "ModelInfer":
            return [self.infer(rng)]
        if name == "ModelStreamInfer":
            return [self.infer(rng) for _ in range(rng.randint(1, 3))]
        cls = message_class(method.request)
        if name in ("ModelReady", "ModelMetadata", "ModelConfig", "ModelStatistics"):
            info = rng.choice(self.infos)
            return [cls(name=info.name, version=rng.choice(("", info.version)))]
        if name == "Check":
            return [cls(service=rng.choice(("", convert.SERVICE_NAME, kserve.SERVICE_NAME)))]
        return [cls()]

    def generate(self, rng: random.Random) -> Message:
        info = rng.choice(self.generators)
        msg = new("genserve.v1.GenerateRequest", model=info.name, num_images=rng.randint(1, 2))
        msg.seed = rng.randrange(-(2**63), 2**63)
        msg.timeout_ms = WORK_TIMEOUT_MS
        msg.encoding = rng.randint(0, 3)
        if info.kind is ModelKind.DIFFUSION:
            msg.steps = rng.randint(1, 2)
            if rng.random() < 0.3:
                msg.sampler = 2  # DDIM
                msg.eta = rng.random()
            if info.num_classes and rng.random() < 0.5:
                msg.guidance = rng.uniform(0, 20)
        elif info.latent_dim and rng.random() < 0.2:
            msg.interpolate_to_seed = rng.randrange(-(2**63), 2**63)
            msg.num_images = 2
        elif rng.random() < 0.2:
            msg.first_index = rng.randrange(2**32 - 2)
        if info.num_classes and rng.random() < 0.5:
            msg.label = rng.randrange(info.num_classes)
        if info.default_temperature is not None and rng.random() < 0.5:
            msg.temperature = rng.uniform(0.01, 10.0)
        if info.style_layers and rng.random() < 0.5:
            msg.truncation = rng.uniform(0.0, 2.0)
            msg.mix_seed = rng.randrange(-(2**63), 2**63)
            msg.mix_layer = rng.randint(0, info.style_layers)
        return msg

    def likelihood(self, rng: random.Random) -> Message:
        info = rng.choice(self.likelihoods)
        pixels = _pixels(rng, (rng.randint(1, 2), *_hwc(info.image_shape)))
        msg = new("genserve.v1.LogLikelihoodRequest", model=info.name)
        msg.timeout_ms = WORK_TIMEOUT_MS
        msg.raw.CopyFrom(convert.tensor_to_proto(pixels))
        return msg

    def translate(self, rng: random.Random) -> Message:
        info = rng.choice(self.translators)
        pixels = _pixels(rng, (rng.randint(1, 2), *_hwc(info.input_shape)))
        msg = new("genserve.v1.TranslateRequest", model=info.name, encoding=rng.randint(0, 3))
        msg.timeout_ms = WORK_TIMEOUT_MS
        if rng.random() < 0.5:
            msg.pngs.extend(images.encode_png(p) for p in pixels)
        else:
            if pixels.shape[-1] == 1 and rng.random() < 0.5:
                pixels = pixels[..., 0]  # (N, H, W)
            msg.raw.CopyFrom(convert.tensor_to_proto(pixels))
        return msg

    def infer(self, rng: random.Random) -> Message:
        info = rng.choice(self.infos)
        rows = rng.randint(1, 2)
        msg = new("inference.ModelInferRequest", model_name=info.name, id=f"case-{rng.randrange(10**6)}")
        if rng.random() < 0.5:
            msg.model_version = info.version
        if info.kind is ModelKind.TRANSLATOR:
            tensors = [("SOURCE", "UINT8", _pixels(rng, (rows, *_hwc(info.input_shape))))]
        else:
            seeds = np.array([[rng.randrange(-(2**63), 2**63)] for _ in range(rows)], dtype="<i8")
            tensors = [("SEED", "INT64", seeds)]
            if info.kind is ModelKind.DIFFUSION:
                tensors.append(("STEPS", "INT32", np.full((rows, 1), rng.randint(1, 2), dtype="<i4")))
            if info.num_classes and rng.random() < 0.5:
                labels = [[rng.randrange(info.num_classes)] for _ in range(rows)]
                tensors.append(("LABEL", "INT32", np.array(labels, dtype="<i4")))
            if info.num_classes and info.kind is ModelKind.DIFFUSION and rng.random() < 0.5:
                tensors.append(("GUIDANCE", "FP32", np.array([[rng.uniform(0, 20)] for _ in range(rows)], "<f4")))
        rng.shuffle(tensors)
        raw = rng.random() < 0.7
        for name, datatype, array in tensors:
            tensor = msg.inputs.add(name=name, datatype=datatype, shape=array.shape)
            if raw:
                msg.raw_input_contents.append(array.tobytes())
            else:
                getattr(tensor.contents, _CONTENTS[datatype]).extend(array.ravel().tolist())
        for output in rng.choice(((), ("IMAGE",), ("IMAGE_FP32",), ("IMAGE", "IMAGE_FP32"))):
            msg.outputs.add(name=output)
        if rng.random() < 0.3:
            msg.parameters["timeout"].int64_param = WORK_TIMEOUT_MS * 1000
        return msg

    def any_valid(self, rng: random.Random) -> bytes:
        """A serialized valid request of a random method (for splices)."""
        return rng.choice((self.generate, self.translate, self.infer))(rng).SerializeToString()


_CONTENTS = {"INT64": "int64_contents", "INT32": "int_contents", "FP32": "fp32_contents", "UINT8": "uint_contents"}


def _hwc(chw: tuple[int, int, int]) -> tuple[int, int, int]:
    c, h, w = chw
    return h, w, c


def _pixels(rng: random.Random, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(rng.getrandbits(64)).integers(0, 256, shape, dtype=np.uint8)


# --- Random and extreme field values, for any message type ---------------------------------------

_INT_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.CPPTYPE_ENUM: (-(2**31), 2**31 - 1),
}
_FLOATS = (math.nan, -math.nan, math.inf, -math.inf, -0.0, 0.0, 1e38, -1e38, 3.4e38, 1.4e-45, 1e308, 5e-324)
_STRINGS = ("", " ", "\x00", "é🎨", "../../etc/passwd", "IMAGE", "SEED", "INT64", "timeout", "A" * 300)


def _is_repeated(f: FieldDescriptor) -> bool:
    return f.is_repeated


def _is_map(f: FieldDescriptor) -> bool:
    return f.message_type is not None and f.message_type.GetOptions().map_entry


def _scalar(f: FieldDescriptor, rng: random.Random, extreme: bool) -> object:
    """A value of the field's type: random, or from the edges of its range (NaN, inf, min, max, ...)."""
    cpp = f.cpp_type
    if cpp in _INT_RANGES:
        lo, hi = _INT_RANGES[cpp]
        if cpp == FieldDescriptor.CPPTYPE_ENUM and not extreme:
            return rng.choice([v.number for v in f.enum_type.values] + [rng.randint(-5, 100)])
        if extreme:
            return rng.choice((lo, hi, 0, -1 if lo else 1, hi // 2 + 1, 2**31 - 1 if hi > 2**31 else hi, 65, 1001))
        return rng.choice((rng.randint(lo, hi), rng.randint(max(lo, -3), 70)))
    if cpp in (FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE):
        value = rng.choice(_FLOATS) if extreme else rng.choice((rng.uniform(-30, 30), rng.random()))
        return (
            value if cpp == FieldDescriptor.CPPTYPE_DOUBLE or not math.isfinite(value) or abs(value) < 3.4e38 else 3e38
        )
    if cpp == FieldDescriptor.CPPTYPE_BOOL:
        return rng.random() < 0.5
    if f.type == FieldDescriptor.TYPE_BYTES:
        n = rng.choice((0, 1, 7, 100, 4096, 1 << 20)) if extreme else rng.randint(0, 64)
        return rng.randbytes(n)
    if extreme:
        return rng.choice((*_STRINGS, "x" * rng.choice((10**4, 10**6))))
    return rng.choice((*_STRINGS, "".join(rng.choice("abcdefghij-_.0123456789") for _ in range(rng.randint(1, 20)))))


def random_fill(msg: Message, rng: random.Random, depth: int = 3) -> Message:
    """Set a random subset of ``msg``'s fields (recursively, to ``depth``) to random values of their types."""
    for f in msg.DESCRIPTOR.fields:
        if rng.random() < 0.5:
            continue
        target = getattr(msg, f.name)
        if _is_map(f):
            key_f, value_f = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
            for _ in range(rng.randint(1, 3)):
                key = _scalar(key_f, rng, False)
                if value_f.message_type is not None:
                    if depth > 0:
                        random_fill(target[key], rng, depth - 1)
                else:
                    target[key] = _scalar(value_f, rng, False)
        elif f.message_type is not None:
            if depth <= 0:
                continue
            if _is_repeated(f):
                for _ in range(rng.randint(1, 3)):
                    random_fill(target.add(), rng, depth - 1)
            else:
                random_fill(target, rng, depth - 1)
                target.SetInParent()
        elif _is_repeated(f):
            target.extend(_scalar(f, rng, False) for _ in range(rng.randint(1, 5)))
        else:
            setattr(msg, f.name, _scalar(f, rng, False))
    return msg


def _fields_in(msg: Message, depth: int = 4) -> Iterator[tuple[Message, FieldDescriptor]]:
    """(message, field) for every field of ``msg`` and of the sub-messages it holds."""
    for f in msg.DESCRIPTOR.fields:
        yield msg, f
        if depth and f.message_type is not None and not _is_map(f):
            value = getattr(msg, f.name)
            for sub in value if _is_repeated(f) else ([value] if msg.HasField(f.name) else []):
                yield from _fields_in(sub, depth - 1)


def set_extreme(msg: Message, rng: random.Random) -> str:
    """Set one field of ``msg`` (or of a message in it) to an extreme value; its name."""
    holder, f = rng.choice(list(_fields_in(msg)))
    target = getattr(holder, f.name)
    if _is_map(f):
        value_f = f.message_type.fields_by_name["value"]
        key = _scalar(f.message_type.fields_by_name["key"], rng, True)
        if value_f.message_type is not None:
            random_fill(target[key], rng, 1)
        else:
            target[key] = _scalar(value_f, rng, True)
    elif f.message_type is not None:
        if _is_repeated(f):
            del target[:]
        else:
            holder.ClearField(f.name)
    elif _is_repeated(f):
        count = rng.choice((0, 1, 65, 1000, 100_000))
        del target[:]
        value = _scalar(f, rng, True)
        if isinstance(value, str | bytes):  # at most about 8 MB in all
            value = value[:1000]
            count = min(count, (8 << 20) // max(1, len(value)))
        target.extend([value] * count)
    else:
        setattr(holder, f.name, _scalar(f, rng, True))
    return f.name


# --- Byte mutations ------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def wire_fields(data: bytes) -> list[tuple[int, int, bytes]] | None:
    """Top-level (field number, wire type, encoded value) of a message; None if the bytes do not parse."""
    fields, pos = [], 0

    def read_varint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            if pos >= len(data) or shift > 63:
                raise ValueError
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    try:
        while pos < len(data):
            key = read_varint()
            number, wire, start = key >> 3, key & 7, pos
            if wire == 0:
                read_varint()
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire == 2:
                pos += read_varint()
            else:
                return None
            if pos > len(data):
                return None
            fields.append((number, wire, data[start:pos]))
    except ValueError:
        return None
    return fields


def encode_field(number: int, wire: int, value: bytes) -> bytes:
    return varint(number << 3 | wire) + value


def _wrong_wire_type(data: bytes, rng: random.Random) -> bytes:
    fields = wire_fields(data)
    if not fields:
        return data + encode_field(rng.randint(1, 20), 2, varint(3) + b"abc")
    i = rng.randrange(len(fields))
    number, wire, _ = fields[i]
    other = rng.choice([w for w in (0, 1, 2, 5) if w != wire])
    value = {0: varint(rng.getrandbits(64)), 1: rng.randbytes(8), 5: rng.randbytes(4)}.get(other)
    if value is None:
        payload = rng.randbytes(rng.randint(0, 16))
        value = varint(len(payload)) + payload
    fields[i] = (number, other, value)
    return b"".join(encode_field(*f) for f in fields)


def _repeat_field(data: bytes, rng: random.Random) -> bytes:
    """One field repeated up to 100,000 times (a scalar: the last wins; a message: they merge)."""
    fields = wire_fields(data)
    if not fields:
        return data * rng.randint(2, 100)
    one = encode_field(*rng.choice(fields))
    times = min(rng.choice((2, 100, 10_000, 100_000)), max(2, (8 << 20) // max(1, len(one))))
    return data + one * times


def _huge_length(data: bytes, rng: random.Random) -> bytes:
    """A length-delimited field that claims more bytes than the message has."""
    length = rng.choice((len(data) + 1, 2**31 - 1, 2**31, 2**32 + 5, 2**63, 2**64 - 1))
    field_no = rng.choice([f[0] for f in wire_fields(data) or [(1, 2, b"")]])
    return data + encode_field(field_no, 2, varint(length)) + rng.randbytes(rng.randint(0, 8))


def _bad_varint(data: bytes, rng: random.Random) -> bytes:
    """An 11-byte (invalid) or 10-byte maximal varint, or a key with field number 0 or > 2**29."""
    choice = rng.randrange(4)
    if choice == 0:
        return data + encode_field(2, 0, b"\xff" * 10 + b"\x01")
    if choice == 1:
        return data + encode_field(rng.randint(1, 13), 0, b"\xff" * 9 + b"\x01")
    if choice == 2:
        return data + varint(0 << 3 | 0) + b"\x01"  # field number 0
    return data + varint((2**29 + rng.randint(0, 100)) << 3) + b"\x01"


def _unknown_fields(data: bytes, rng: random.Random) -> bytes:
    extra = b""
    for _ in range(rng.randint(1, 20)):
        number = rng.choice((rng.randint(14, 100), 19_000, 19_999, 2**29 - 1, rng.randint(1, 2**29 - 1)))
        wire = rng.choice((0, 1, 2, 5))
        value = {0: varint(rng.getrandbits(64)), 1: rng.randbytes(8), 5: rng.randbytes(4)}.get(wire)
        if value is None:
            payload = rng.randbytes(rng.randint(0, 64))
            value = varint(len(payload)) + payload
        extra += encode_field(number, wire, value)
    cut = rng.randint(0, len(data))
    fields = wire_fields(data)
    if fields is not None:  # insert between fields, so the message still parses
        cut = sum(len(encode_field(*f)) for f in fields[: rng.randint(0, len(fields))])
    return data[:cut] + extra + data[cut:]


def _nested_groups(data: bytes, rng: random.Random) -> bytes:
    """An unknown field of groups nested ``depth`` deep (past the parser's recursion limit, or not)."""
    depth = rng.choice((10, 99, 100, 101, 1000, 100_000))
    number = rng.randint(14, 1000)
    start, end = varint(number << 3 | 3), varint(number << 3 | 4)
    closed = rng.random() < 0.8
    return data + start * depth + (end * depth if closed else b"")


def _nested_messages(data: bytes, rng: random.Random) -> bytes:
    """A length-delimited unknown field holding itself ``depth`` times."""
    inner = b""
    for _ in range(rng.choice((10, 100, 101, 2000))):
        inner = encode_field(15, 2, varint(len(inner)) + inner)
    return data + inner


def _invalid_utf8(data: bytes, rng: random.Random) -> bytes:
    """A string field (the first field of every request here that has one) with bytes that are not UTF-8."""
    bad = rng.choice((b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"ok\xf0\x28\x8c\x28"))
    return encode_field(1, 2, varint(len(bad)) + bad) + data


def _flip_bits(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return bytes([1 << rng.randrange(8)])
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def _set_bytes(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return rng.randbytes(4)
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] = rng.choice((0, 0xFF, 0x7F, 0x80, 0x01, rng.randrange(256)))
    return bytes(out)


def _insert_bytes(data: bytes, rng: random.Random) -> bytes:
    at = rng.randint(0, len(data))
    return data[:at] + rng.randbytes(rng.randint(1, 32)) + data[at:]


def _delete_range(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    start = rng.randrange(len(data))
    return data[:start] + data[start + rng.randint(1, max(1, len(data) // 4)) :]


def _truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))] if data else data


def _duplicate_range(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    start = rng.randrange(len(data))
    chunk = data[start : start + rng.randint(1, 64)]
    at = rng.randint(0, len(data))
    return data[:at] + chunk * rng.randint(1, 4) + data[at:]


def _random_bytes(data: bytes, rng: random.Random) -> bytes:
    return rng.randbytes(rng.choice((0, 1, 2, 5, 16, 100, 1000, 65536)))


def _oversized(data: bytes, rng: random.Random) -> bytes:
    """Over the server's message limit: a valid prefix and an unknown bytes field to fill it."""
    size = MAX_MESSAGE_BYTES + rng.randint(1, 1024)
    pad = size - len(data) - 16
    return data + encode_field(99, 2, varint(pad) + b"\0" * pad)


BYTE_MUTATIONS: dict[str, tuple[float, Callable[[bytes, random.Random], bytes]]] = {
    "flip_bits": (10, _flip_bits),
    "set_bytes": (8, _set_bytes),
    "insert_bytes": (6, _insert_bytes),
    "delete_range": (6, _delete_range),
    "truncate": (8, _truncate),
    "duplicate_range": (4, _duplicate_range),
    "splice": (5, None),  # needs the corpus: run_case does it
    "wrong_wire_type": (8, _wrong_wire_type),
    "repeat_field": (4, _repeat_field),
    "huge_length": (4, _huge_length),
    "bad_varint": (3, _bad_varint),
    "unknown_fields": (5, _unknown_fields),
    "nested_groups": (3, _nested_groups),
    "nested_messages": (2, _nested_messages),
    "invalid_utf8": (3, _invalid_utf8),
    "random_bytes": (6, _random_bytes),
    "empty": (2, lambda data, rng: b""),
    "oversized": (0.08, _oversized),
}


# --- Structured mutations, per method ------------------------------------------------------------


def _tensor(dtype: int, shape, data: bytes) -> Message:
    return new("genserve.v1.Tensor", dtype=dtype, shape=list(shape), data=data)


def _png(rng: random.Random, size: tuple[int, int], mode: str) -> bytes:
    array = _pixels(rng, (size[1], size[0], 4 if mode == "RGBA" else 3))
    img = PILImage.fromarray(array[..., :4] if mode == "RGBA" else array).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming ``width`` x ``height``, then nothing."""
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def _semantic_generate(corpus: Corpus, rng: random.Random) -> tuple[str, Message]:
    msg = corpus.generate(rng)
    info = next(i for i in corpus.infos if i.name == msg.model)
    case = rng.choice(
        (
            "num_images",
            "steps",
            "eta",
            "guidance",
            "label",
            "timeout_ms",
            "priority",
            "first_index",
            "interpolate",
            "sampler",
            "encoding",
            "model",
            "wrong_kind",
        )
    )
    if case == "num_images":
        msg.num_images = rng.choice((0, -1, -(2**31), 2**31 - 1, info.max_images + 1, 10**6, 1000))
    elif case == "steps":
        msg.steps = rng.choice((0, -1, -(2**31), 2**31 - 1, (info.num_timesteps or 1000) + 1))
    elif case == "eta":
        msg.sampler = rng.choice((0, 1, 2))
        msg.eta = rng.choice((math.nan, math.inf, -math.inf, -0.0, -1e-30, 1.0000001, 3e38))
    elif case == "guidance":
        msg.guidance = rng.choice((math.nan, math.inf, -math.inf, -1e-30, 20.001, 3e38))
    elif case == "label":
        msg.label = rng.choice((-1, -(2**31), 2**31 - 1, (info.num_classes or 0), 10, 1000))
    elif case == "timeout_ms":
        msg.timeout_ms = rng.choice((0, 1, 2**32 - 1, 2**31))
    elif case == "priority":
        msg.priority = rng.choice((2, 3, 100, 2**32 - 1))
    elif case == "first_index":
        msg.first_index = 2**32 - 1
        msg.num_images = rng.choice((2, info.max_images, info.max_images + 1))
        msg.ClearField("interpolate_to_seed")
        if info.kind is ModelKind.DIFFUSION:
            msg.num_images = 2  # a valid one runs: keep it small
    elif case == "interpolate":
        msg.interpolate_to_seed = rng.randrange(-(2**63), 2**63)
        msg.num_images = rng.choice((0, 1, 2, info.max_images + 1))
        msg.first_index = rng.choice((0, 1, 2**32 - 1))
    elif case == "sampler":
        msg.sampler = rng.choice((3, 99, -1, -(2**31), 2**31 - 1))
    elif case == "encoding":
        msg.encoding = rng.choice((4, 99, -1, -(2**31)))
    elif case == "model":
        msg.model = rng.choice(
            (
                "",
                " ",
                "\x00",
                msg.model.upper(),
                msg.model + "\x00",
                msg.model + " ",
                "é🎨",
                "m" * rng.choice((300, 10**5, 4 * 10**6)),
            )
        )
    else:  # a translator's name in Generate
        msg.model = rng.choice(corpus.translators).name if corpus.translators else "none"
    return case, msg


def _semantic_translate(corpus: Corpus, rng: random.Random) -> tuple[str, Message]:
    msg = corpus.translate(rng)
    info = next(i for i in corpus.infos if i.name == msg.model)
    h, w, c = _hwc(info.input_shape)
    cases = (
        "raw_short",
        "raw_long",
        "raw_shape",
        "raw_dtype",
        "raw_negative_dims",
        "raw_overflow_dims",
        "raw_many_dims",
        "raw_zero_images",
        "raw_too_many",
        "raw_scalar",
        "both",
        "neither",
        "png_garbage",
        "png_truncated",
        "png_other_format",
        "png_mode",
        "png_size",
        "png_huge_header",
        "png_too_many",
        "model",
        "wrong_kind",
    )
    case = rng.choice(cases)
    msg.ClearField("raw")
    del msg.pngs[:]
    n = rng.randint(1, 2)
    good = _pixels(rng, (n, h, w, c))
    if case == "raw_short":
        msg.raw.CopyFrom(_tensor(1, good.shape, good.tobytes()[: -rng.randint(1, 10)]))
    elif case == "raw_long":
        msg.raw.CopyFrom(_tensor(1, good.shape, good.tobytes() + b"\0" * rng.randint(1, 10)))
    elif case == "raw_shape":
        shape = rng.choice(
            ((n, w + 1, h, c), (n, h, w, 3 if c == 1 else 1), (n, h * w * c), (n, 1, 1, 1), (n, 0, w, c))
        )
        msg.raw.CopyFrom(_tensor(1, shape, b"\0" * math.prod(shape)))
    elif case == "raw_dtype":
        dtype = rng.choice((2, 0, 3, 99, -1))
        msg.raw.CopyFrom(_tensor(dtype, good.shape, good.astype("<f4").tobytes() if dtype == 2 else good.tobytes()))
    elif case == "raw_negative_dims":
        msg.raw.CopyFrom(_tensor(1, (-n, h, w, c), b""))
    elif case == "raw_overflow_dims":  # the product wraps around int64 to 0 or to the byte count
        shape = rng.choice(((2**32, 2**32), (2**32, 2**32, h, w), (2**62, 4, 1, 1), (2**63 - 1, 2**63 - 1, 1, 1)))
        msg.raw.CopyFrom(_tensor(1, shape, b""))
    elif case == "raw_many_dims":
        dims = rng.choice((5, 32, 33, 64, 65, 1000))
        msg.raw.CopyFrom(_tensor(1, (1,) * dims, b"\x07"))
    elif case == "raw_zero_images":
        msg.raw.CopyFrom(_tensor(1, (0, h, w, c), b""))
    elif case == "raw_too_many":
        many = info.max_images + rng.choice((1, 1000))
        msg.raw.CopyFrom(_tensor(1, (many, h, w, c), b"\0" * (many * h * w * c)))
    elif case == "raw_scalar":
        msg.raw.CopyFrom(_tensor(1, (), b"\x01"))
    elif case == "both":
        msg.raw.CopyFrom(convert.tensor_to_proto(good))
        msg.pngs.extend(images.encode_png(p) for p in good)
    elif case == "neither":
        msg.raw.SetInParent() if rng.random() < 0.5 else None
    elif case == "png_garbage":
        msg.pngs.extend(rng.randbytes(rng.randint(0, 100)) for _ in range(n))
    elif case == "png_truncated":
        png = images.encode_png(good[0])
        msg.pngs.append(png[: rng.randrange(len(png))])
    elif case == "png_other_format":
        buf = io.BytesIO()
        PILImage.fromarray(good[0][..., 0]).save(buf, format=rng.choice(("JPEG", "GIF", "BMP", "TIFF")))
        msg.pngs.append(buf.getvalue())
    elif case == "png_mode":
        mode = rng.choice(("RGBA", "LA", "P", "1", "I;16", "I", "RGB", "L"))
        try:
            msg.pngs.append(_png(rng, (w, h), mode))
        except (OSError, ValueError):
            msg.pngs.append(_png(rng, (w, h), "RGB"))
    elif case == "png_size":
        msg.pngs.append(_png(rng, rng.choice(((w + 1, h), (1, 1), (w, h * 2), (256, 256))), "L"))
    elif case == "png_huge_header":
        msg.pngs.append(_png_header_only(*rng.choice(((100_000, 100_000), (4096, 4097), (2**31 - 1, 1), (0, 0)))))
    elif case == "png_too_many":
        png = images.encode_png(good[0])
        msg.pngs.extend([png] * (info.max_images + rng.choice((1, 500))))
    elif case == "model":
        msg.raw.CopyFrom(convert.tensor_to_proto(good))
        msg.model = rng.choice(("", "no-such-model", "x" * 10**5))
    else:
        msg.raw.CopyFrom(convert.tensor_to_proto(good))
        msg.model = rng.choice(corpus.generators).name
    return case, msg


def _semantic_infer(corpus: Corpus, rng: random.Random) -> tuple[str, Message]:
    msg = corpus.infer(rng)
    info = next(i for i in corpus.infos if i.name == msg.model_name)
    raw = len(msg.raw_input_contents) > 0
    i = rng.randrange(len(msg.inputs))
    tensor = msg.inputs[i]
    cases = (
        "datatype",
        "shape",
        "batch",
        "raw_length",
        "raw_count",
        "name",
        "duplicate",
        "missing",
        "contents_field",
        "contents_range",
        "raw_and_contents",
        "steps_differ",
        "guidance",
        "label",
        "timeout",
        "outputs",
        "shared_memory",
        "version",
        "model",
    )
    case = rng.choice(cases)
    if case == "datatype":
        tensor.datatype = rng.choice(
            ("", "INT32", "INT64", "FP32", "FP64", "UINT8", "BYTES", "BF16", "int64", "X" * 1000)
        )
    elif case == "shape":
        shape = rng.choice(([], [1], [1, 1, 1], [-1, 1], [1, -1], [2**63 - 1, 1], [1, 2**62], [0], [1] * 100))
        tensor.ClearField("shape")
        tensor.shape.extend(shape)
    elif case == "batch":
        tensor.shape[0] = rng.choice((0, -1, info.max_images + 1, 2**31, -(2**63)))
    elif case == "raw_length" and raw:
        data = msg.raw_input_contents[i]
        msg.raw_input_contents[i] = rng.choice((b"", data[:-1], data + b"\0", data * 2, data[: len(data) // 2]))
    elif case == "raw_count" and raw:
        if rng.random() < 0.5:
            msg.raw_input_contents.append(rng.randbytes(8))
        else:
            del msg.raw_input_contents[-1]
    elif case == "name":
        tensor.name = rng.choice(("", "seed", "IMAGE", "SOURCE", "SEED ", "x" * 10**5, "SEED\x00"))
    elif case == "duplicate":
        msg.inputs.add().CopyFrom(tensor)
        if raw:
            msg.raw_input_contents.append(msg.raw_input_contents[i])
    elif case == "missing":
        del msg.inputs[i]
        if raw:
            del msg.raw_input_contents[i]
    elif case == "contents_field":
        del msg.raw_input_contents[:]
        for t in msg.inputs:
            t.ClearField("contents")
        field_name = rng.choice(tuple(_CONTENTS.values()) + ("bool_contents", "fp64_contents", "bytes_contents"))
        value = {"bool_contents": True, "fp64_contents": 1.5, "bytes_contents": b"1"}.get(field_name, 1)
        getattr(tensor.contents, field_name).extend([value] * math.prod(tensor.shape))
    elif case == "contents_range":
        del msg.raw_input_contents[:]
        for t in msg.inputs:
            t.ClearField("contents")
            field_name = _CONTENTS.get(t.datatype, "int_contents")
            extreme = {"uint_contents": 2**32 - 1, "int_contents": -(2**31), "fp32_contents": math.nan}
            value = extreme.get(field_name, -(2**63))
            getattr(t.contents, field_name).extend([value] * max(0, math.prod(t.shape)))
    elif case == "raw_and_contents" and raw:
        tensor.contents.int64_contents.append(1)
    elif case == "steps_differ" and info.kind is ModelKind.DIFFUSION:
        _set_input(msg, "STEPS", "INT32", np.array([[1], [rng.choice((2, 1000, 0, -5))]], dtype="<i4"))
    elif case == "guidance" and info.num_classes and info.kind is ModelKind.DIFFUSION:
        value = rng.choice((math.nan, math.inf, -math.inf, -1.0, 21.0))
        _set_input(msg, "GUIDANCE", "FP32", np.full((int(msg.inputs[0].shape[0]), 1), value, dtype="<f4"))
    elif case == "label" and info.num_classes:
        value = rng.choice((-1, info.num_classes, 2**31 - 1))
        _set_input(msg, "LABEL", "INT32", np.full((int(msg.inputs[0].shape[0]), 1), value, dtype="<i4"))
    elif case == "timeout":
        param = msg.parameters["timeout"]
        choice = rng.randrange(5)
        if choice == 0:
            param.string_param = "1000"
        elif choice == 1:
            param.bool_param = True
        elif choice == 2:
            param.int64_param = rng.choice((-1, -(2**63), 2**63 - 1, 1))
        elif choice == 3:
            param.double_param = math.nan
        else:
            param.Clear()
    elif case == "outputs":
        msg.outputs.add(name=rng.choice(("", "image", "IMAGE_FP16", "SEED", "x" * 10**4)))
    elif case == "shared_memory":
        target = tensor if rng.random() < 0.5 else msg.outputs.add(name="IMAGE")
        target.parameters["shared_memory_region"].string_param = "region"
    elif case == "version":
        msg.model_version = rng.choice(("2", "0", "-1", "x" * 10**4))
    else:
        msg.model_name = rng.choice(("", "no-such-model", " ", "x" * 10**5, msg.model_name + "\x00"))
    return case, msg


def _set_input(msg: Message, name: str, datatype: str, array: np.ndarray) -> None:
    """Replace (or add) input ``name`` with ``array``, as raw or typed contents like the others."""
    raw = len(msg.raw_input_contents) > 0
    for i, t in enumerate(msg.inputs):
        if t.name == name:
            del msg.inputs[i]
            if raw:
                del msg.raw_input_contents[i]
            break
    tensor = msg.inputs.add(name=name, datatype=datatype, shape=array.shape)
    if raw:
        msg.raw_input_contents.append(array.tobytes())
    else:
        getattr(tensor.contents, _CONTENTS[datatype]).extend(array.ravel().tolist())


def semantic(method: Method, corpus: Corpus, rng: random.Random) -> tuple[str, list[Message]] | None:
    """A request that breaks the method's contract on purpose (None: the method has none to break)."""
    name = method.name
    if name == "Generate":
        case, msg = _semantic_generate(corpus, rng)
    elif name == "GenerateStream":
        case, msg = _semantic_generate(corpus, rng)
        preview = rng.choice((0, 1, 2**32 - 1))
        return f"stream_{case}", [new("genserve.v1.GenerateStreamRequest", request=msg, preview_every=preview)]
    elif name == "Translate" and corpus.translators:
        case, msg = _semantic_translate(corpus, rng)
    elif name == "ModelInfer":
        case, msg = _semantic_infer(corpus, rng)
    elif name == "ModelStreamInfer":
        messages = []
        for _ in range(rng.choice((1, 2, 5, 30))):
            messages.append(_semantic_infer(corpus, rng)[1] if rng.random() < 0.7 else corpus.infer(rng))
        return "stream_of_mistakes", messages
    elif name in ("ModelReady", "ModelMetadata", "ModelConfig", "ModelStatistics"):
        cls = message_class(method.request)
        model = rng.choice(corpus.infos).name
        case, msg = (
            "name",
            cls(
                name=rng.choice(("", "no-such-model", model.upper(), "x" * 10**5, model + "\x00")),
                version=rng.choice(("", "1", "999", "x" * 1000)),
            ),
        )
    elif name == "Check":
        case, msg = (
            "service",
            message_class(method.request)(service=rng.choice(("x", "genserve.v1", "x" * 10**5, "\x00"))),
        )
    else:
        return None
    return case, [msg]


# --- One case ------------------------------------------------------------------------------------


@dataclass
class Case:
    index: int
    method: Method
    origin: str  # "valid", "random", "extreme:<field>", "semantic:<case>", "bytes:<mutation>"
    payloads: list[bytes]
    metadata: tuple[tuple[str, str | bytes], ...] = ()

    @property
    def metadata_bytes(self) -> int:
        """Its headers' size as HTTP/2 limits count it (binary values travel base64-encoded)."""
        return sum(32 + len(k) + ((len(v) + 2) // 3 * 4 if isinstance(v, bytes) else len(v)) for k, v in self.metadata)

    @property
    def parseable(self) -> bool:
        return all(parses(self.method, p) for p in self.payloads)


def make_case(index: int, seed: int, methods: list[Method], corpus: Corpus) -> Case:
    """Case ``index`` of the run ``seed``: drawn from its own generator, so it replays alone; one
    in ten carries odd metadata (request ids, tokens, binary headers) as well."""
    rng = random.Random(seed * 1_000_003 + index)
    case = _make_case(index, rng, methods, corpus)
    if rng.random() < 0.1:
        case.metadata = tuple(_metadata(rng) for _ in range(rng.randint(1, 3)))
    return case


def _metadata(rng: random.Random) -> tuple[str, str | bytes]:
    key = rng.choice(("x-request-id", "authorization", "x-fuzz-bin", "user-agent-extra", "x-" + "k" * 200))
    if key.endswith("-bin"):
        return key, rng.randbytes(rng.choice((0, 1, 100, 4000)))
    value = rng.choice(("", " ", "Bearer ", "Bearer x", "id-" + "9" * rng.choice((1, 127, 128, 129, 4000)), "%00%ff"))
    return key, value


def _make_case(index: int, rng: random.Random, methods: list[Method], corpus: Corpus) -> Case:
    method = rng.choices(methods, weights=[weight(m) for m in methods])[0]
    valid = corpus.valid(method, rng)
    kind = rng.choices(("valid", "random", "extreme", "semantic", "bytes"), weights=(8, 12, 15, 20, 45))[0]
    if kind == "valid" and valid:
        return Case(index, method, "valid", [m.SerializeToString() for m in valid])
    valid = valid or [message_class(method.request)()]
    if kind == "semantic" and (made := semantic(method, corpus, rng)) is not None:
        case, messages = made
        return Case(index, method, f"semantic:{case}", [m.SerializeToString() for m in messages])
    if kind == "extreme" and method.request.fields:
        names = [set_extreme(m, rng) for m in valid for _ in range(rng.randint(1, 2))]
        return Case(index, method, f"extreme:{names[0]}", [m.SerializeToString() for m in valid])
    if kind in ("random", "extreme"):  # extreme: a message with no fields is a random one
        messages = [random_fill(message_class(method.request)(), rng) for _ in valid]
        return Case(index, method, "random", [m.SerializeToString() for m in messages])
    names = list(BYTE_MUTATIONS)
    mutation = rng.choices(names, weights=[BYTE_MUTATIONS[n][0] for n in names])[0]
    payloads = [m.SerializeToString() for m in valid]
    i = rng.randrange(len(payloads))  # in a stream, one message is mutated
    if mutation == "splice":
        other = corpus.any_valid(rng)
        payloads[i] = payloads[i][: rng.randint(0, len(payloads[i]))] + other[rng.randint(0, len(other)) :]
    else:
        payloads[i] = BYTE_MUTATIONS[mutation][1](payloads[i], rng)
    return Case(index, method, f"bytes:{mutation}", payloads)


@dataclass
class Outcome:
    status: str
    details: str
    seconds: float
    responses: int
    kind: str = ""  # of failure (``judge``); "" = this outcome does not fail the run
    failure: str = ""  # why it fails the run


def call(channel: grpc.Channel, case: Case) -> Outcome:
    """Send the case's bytes as they are; the final status, and what came back."""
    method, started, responses, meta = case.method, time.monotonic(), [], case.metadata or None
    try:
        if method.client_streaming:
            stream = channel.stream_stream(method.path)(iter(case.payloads), timeout=method.deadline, metadata=meta)
            responses = list(stream)
        elif method.server_streaming:
            responses = list(
                channel.unary_stream(method.path)(case.payloads[0], timeout=method.deadline, metadata=meta)
            )
        else:
            responses = [channel.unary_unary(method.path)(case.payloads[0], timeout=method.deadline, metadata=meta)]
        status, details = "OK", ""
    except grpc.RpcError as exc:
        status, details = exc.code().name, exc.details() or ""
    outcome = Outcome(status, details[:500], time.monotonic() - started, len(responses))
    outcome.kind, outcome.failure = judge(case, outcome, responses)
    return outcome


def judge(case: Case, outcome: Outcome, responses: list[bytes]) -> tuple[str, str]:
    """(kind, why) of the outcome's failure of the run; ("", "") when it is none. Kinds: status,
    stall, details (the status was lost on the way), valid, stream."""
    method, status, details = case.method, outcome.status, outcome.details
    if status == "RESOURCE_EXHAUSTED" and case.metadata_bytes > HEADER_LIMIT:
        return "", ""  # its own headers are over the server's limit
    if (
        status == "RESOURCE_EXHAUSTED"
        and "received initial metadata size exceeds" in details
        or status == "UNAVAILABLE"
    ):
        return "connection", f"{status} ({details[:60]}): another call's oversized headers broke the connection?"
    if status == "RESOURCE_EXHAUSTED" and "metadata size exceeds" in details:
        return "details", "the client got no status: its details passed gRPC's metadata limit (an echoed string?)"
    if status not in ACCEPTABLE:
        return "status", f"status {status}"
    if status == "DEADLINE_EXCEEDED" and not method.work:
        return "stall", f"{method.name} runs no model and passed its {method.deadline:g} s deadline"
    if status == "DEADLINE_EXCEEDED" and not case.parseable:
        return "stall", f"a request that does not parse ran to the {method.deadline:g} s deadline"
    if case.origin == "valid":
        expected = "OK" if method.implemented else "UNIMPLEMENTED"
        if status != expected and status != "DEADLINE_EXCEEDED":
            return "valid", f"a valid request ended {status}, not {expected}"
    if method.name == "ModelStreamInfer" and status == "OK" and case.parseable and len(responses) != len(case.payloads):
        return "stream", f"the stream answered {len(responses)} of {len(case.payloads)} requests"
    return "", ""


# --- A run ---------------------------------------------------------------------------------------


class HealthProbe:
    """Health Check beside the fuzzing: the slowest answer, and the probes that got none in time."""

    def __init__(self, target: str):
        self._channel = grpc.insecure_channel(target)
        self._check = self._channel.unary_unary("/grpc.health.v1.Health/Check")
        self._request = health_pb2.HealthCheckRequest().SerializeToString()
        self._stop = threading.Event()
        self.probes, self.max_seconds, self.failed = 0, 0.0, []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(PROBE_EVERY_S):
            started = time.monotonic()
            try:
                self._check(self._request, timeout=PROBE_DEADLINE_S)
            except grpc.RpcError as exc:
                self.failed.append(f"{exc.code().name}: {exc.details()}")
            self.probes += 1
            self.max_seconds = max(self.max_seconds, time.monotonic() - started)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._channel.close()


@dataclass
class Report:
    transport: str
    target: str
    seed: int
    messages: int
    seconds: float = 0.0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # method -> status -> calls
    by_origin: dict[str, dict[str, int]] = field(default_factory=dict)  # kind of case -> status -> calls
    unparseable: dict[str, int] = field(default_factory=dict)  # status of calls whose bytes do not parse
    failures: list[dict] = field(default_factory=list)  # the first examples of each kind
    failure_count: int = 0
    failure_kinds: dict[str, int] = field(default_factory=dict)  # kind (``judge``) -> failing calls
    deadline_exceeded_work: int = 0  # work calls cut by the deadline (not failures: see the module doc)
    health: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)  # the checks after the run
    tracebacks: list[str] = field(default_factory=list)  # the first ones in the server's log

    @property
    def problems(self) -> list[str]:
        """Everything that fails the run, in words."""
        found = [f"{self.failure_count} failing calls {self.failure_kinds}"] if self.failure_count else []
        if self.health.get("failed"):
            found.append(f"{len(self.health['failed'])} health probes failed: {self.health['failed'][:3]}")
        found += [f"after the run: {k} = {v}" for k, v in self.after.items() if v not in (True, "OK", 0)]
        return found


def fuzz(
    target: str,
    messages: int,
    seed: int = 0,
    workers: int = 4,
    transport: str = "",
    progress: bool = False,
    cases: list[int] | None = None,
    max_examples: int = 5,
) -> Report:
    """Send ``messages`` cases (or just the case numbers ``cases``) to the server at ``target``."""
    with GenserveClient(target, timeout=30) as client:
        corpus = Corpus(client.list_models())
    methods = all_methods()
    indices = cases if cases is not None else range(messages)
    report = Report(transport, target, seed, len(indices))
    counts: dict[str, Counter] = defaultdict(Counter)
    by_origin: dict[str, Counter] = defaultdict(Counter)
    unparseable: Counter = Counter()
    examples: Counter = Counter()
    lock = threading.Lock()
    channel = grpc.insecure_channel(target, options=CLIENT_OPTIONS)

    def one(index: int) -> None:
        case = make_case(index, seed, methods, corpus)
        outcome = call(channel, case)
        parseable = case.parseable
        with lock:
            counts[case.method.name][outcome.status] += 1
            by_origin[case.origin.split(":")[0]][outcome.status] += 1
            if not parseable:
                unparseable[outcome.status] += 1
            if outcome.status == "DEADLINE_EXCEEDED" and case.method.work:
                report.deadline_exceeded_work += 1
            if outcome.failure:
                report.failure_count += 1
                report.failure_kinds[outcome.kind] = report.failure_kinds.get(outcome.kind, 0) + 1
                key = (case.method.name, outcome.status, outcome.details[:40], parseable)
                examples[key] += 1
                if examples[key] <= max_examples:
                    report.failures.append(_example(case, outcome, parseable))

    bar = _progress(len(indices), transport) if progress else None
    started = time.monotonic()
    with HealthProbe(target) as probe, concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending: set[concurrent.futures.Future] = set()
        for index in indices:
            if len(pending) >= 4 * workers:  # bounded: cases are made as they are sent
                done, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                _finish(done, bar)
            pending.add(pool.submit(one, index))
        _finish(concurrent.futures.wait(pending).done, bar)
    report.seconds = round(time.monotonic() - started, 2)
    if bar is not None:
        bar.close()
    channel.close()
    report.counts = {m: dict(sorted(c.items())) for m, c in sorted(counts.items())}
    report.by_origin = {o: dict(sorted(c.items())) for o, c in sorted(by_origin.items())}
    report.unparseable = dict(sorted(unparseable.items()))
    report.health = {"probes": probe.probes, "max_seconds": round(probe.max_seconds, 3), "failed": probe.failed}
    report.after = after_checks(target, corpus)
    return report


def _finish(done, bar) -> None:
    for future in done:
        future.result()  # a bug of the fuzzer itself stops the run
        if bar is not None:
            bar.update()


def _progress(total: int, transport: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"fuzz {transport}".strip(), unit="msg", smoothing=0.1)


def _example(case: Case, outcome: Outcome, parseable: bool) -> dict:
    first = case.payloads[0] if case.payloads else b""
    return {
        "case": case.index,
        "method": case.method.path,
        "origin": case.origin,
        "status": outcome.status,
        "details": outcome.details,
        "kind": outcome.kind,
        "why": outcome.failure,
        "parseable": parseable,
        "seconds": round(outcome.seconds, 3),
        "payload_bytes": [len(p) for p in case.payloads],
        "payload_head_hex": first[:64].hex(),
        "metadata": [(k, v[:40].hex() if isinstance(v, bytes) else v[:40]) for k, v in case.metadata],
    }


def after_checks(target: str, corpus: Corpus) -> dict:
    """A valid Generate and a valid ModelInfer succeed, and health says SERVING."""
    results = {}
    rng = random.Random(0)
    model = corpus.generators[0].name
    generate = new("genserve.v1.GenerateRequest", model=model, num_images=1, seed=1)
    if corpus.generators[0].kind is ModelKind.DIFFUSION:
        generate.steps = 1
    infer = corpus.infer(rng)
    health = health_pb2.HealthCheckRequest().SerializeToString()
    with grpc.insecure_channel(target, options=CLIENT_OPTIONS) as channel:
        for name, path, payload in (
            ("generate", "/genserve.v1.GenerationService/Generate", generate.SerializeToString()),
            ("model_infer", "/inference.GRPCInferenceService/ModelInfer", infer.SerializeToString()),
            ("health", "/grpc.health.v1.Health/Check", health),
        ):
            try:
                channel.unary_unary(path)(payload, timeout=DEADLINE_S)
                results[name] = "OK"
            except grpc.RpcError as exc:
                results[name] = f"{exc.code().name}: {exc.details()}"
    return results


def tracebacks(log: str) -> list[str]:
    """The tracebacks in a server log, each with the line logged before it and its exception line."""
    lines, found = log.splitlines(), []
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            end = next((j for j in range(i + 1, len(lines)) if not lines[j].startswith(" ")), len(lines) - 1)
            found.append("\n".join(lines[max(0, i - 1) : end + 1]))
    return found


# --- The benchmark -------------------------------------------------------------------------------


def start_server(models: Path, transport: str, command: Path | None = None):
    """``genserve serve --frontend transport`` as the tests start it (its log is kept), once SERVING;
    ``command``: another genserve executable (a patched one, to measure a fix)."""
    from tests.integration.servers import GENSERVE, ServerProcess

    server = ServerProcess(models, "--frontend", transport, command=command or GENSERVE)
    try:
        return server.wait_until_serving()
    except BaseException:
        server.stop()
        raise


def run_on_server(transport: str, models: Path, args: argparse.Namespace) -> tuple[Report, str]:
    """Start a server on ``transport``, fuzz it, check it; the report and the server's log."""
    server = start_server(models, transport, args.command)
    try:
        report = fuzz(server.target, args.messages, args.seed, args.workers, transport, True, args.case)
        report.after["process_alive"] = server.proc.poll() is None
        found = tracebacks(server.log)
        report.after["log_tracebacks"] = len(found)
        report.tracebacks = found[:5]
    finally:
        server.stop()
    return report, server.log


def write(folder: Path, reports: list[Report], env: dict, args: argparse.Namespace) -> None:
    summary = {
        "command": " ".join(sys.argv),
        "seed": args.seed,
        "messages_per_transport": args.messages,
        "workers": args.workers,
        "deadlines_s": {"work": WORK_DEADLINE_S, "other": DEADLINE_S},
        "environment": env,
        "ok": all(not r.problems for r in reports),
        "runs": [asdict(r) | {"problems": r.problems} for r in reports],
    }
    (folder / "fuzz.json").write_text(json.dumps(summary, indent=2) + "\n")
    with (folder / "counts.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["transport", "method", "status", "count"])
        for r in reports:
            for method, statuses in r.counts.items():
                for status, count in statuses.items():
                    writer.writerow([r.transport, method, status, count])


def log_excerpt(log: str, width: int = 2000, most: int = 400) -> str:
    """The first ``most`` lines of a server log that are not INFO (a line per rejected call), each
    cut to ``width`` characters (errors may quote megabytes a client sent)."""
    lines = [line for line in log.splitlines() if " INFO " not in line[:60]]
    kept = [line if len(line) <= width else f"{line[:width]}... ({len(line)} characters)" for line in lines[:most]]
    if len(lines) > most:
        kept.append(f"... and {len(lines) - most} more lines")
    return "\n".join(kept) + "\n"


def print_report(report: Report) -> None:
    statuses = sorted({s for c in report.counts.values() for s in c})
    width = max(len(m) for m in report.counts)
    print(f"\n{report.transport}: {report.messages} messages in {report.seconds} s (seed {report.seed})")
    print(" " * width + "".join(f"{s[:12]:>13}" for s in statuses))
    for method, counts in report.counts.items():
        print(f"{method:<{width}}" + "".join(f"{counts.get(s, 0):>13}" for s in statuses))
    print(f"unparseable requests: {report.unparseable}")
    print(f"health: {report.health['probes']} probes, slowest {report.health['max_seconds']} s")
    print(f"after: {report.after}")
    for example in report.failures[:20]:
        print(
            f"  FAIL case {example['case']} {example['method']} {example['origin']}: {example['why']} "
            f"({example['details'][:120]!r})"
        )
    for traceback in report.tracebacks[:2]:
        print(f"  traceback in the log:\n{traceback}")
    print("problems: " + ("; ".join(report.problems) or "none"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=("native", "grpcio", "both"), default="both")
    parser.add_argument("--messages", type=int, default=10_000, help="cases per transport")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--server", help="fuzz a running server at HOST:PORT instead of starting one")
    parser.add_argument("--command", type=Path, help="the genserve executable to start (default: this venv's)")
    parser.add_argument("--workers", type=int, default=4, help="calls in flight")
    parser.add_argument("--case", type=int, nargs="+", help="replay only these case numbers")
    parser.add_argument("--no-save", action="store_true", help="print only; write no run folder")
    args = parser.parse_args()
    env = report_.environment()
    transports = ("native", "grpcio") if args.transport == "both" else (args.transport,)
    reports, logs = [], {}
    if args.server:
        reports.append(fuzz(args.server, args.messages, args.seed, args.workers, "server", True, args.case))
    else:
        for transport in transports:
            report, logs[transport] = run_on_server(transport, args.models, args)
            reports.append(report)
    for report in reports:
        print_report(report)
    if not args.no_save:
        folder = report_.run_folder("fuzz")
        write(folder, reports, env, args)
        for transport, log in logs.items():
            (folder / f"server-{transport}.log").write_text(log_excerpt(log))
        print(f"\nwrote {folder.relative_to(ROOT)}")
    sys.exit(0 if all(not r.problems for r in reports) else 1)


if __name__ == "__main__":
    main()
