"""Decodes Sparkplug B payloads with Eclipse Tahu's generated protobuf module
(sparkplug_b_pb2, as shipped by the `tahutils` package), independent of the
gateway's own code.

  sub PORT: subscribes to spBv1.0/# on the broker at 127.0.0.1:PORT (paho-mqtt)
          and prints one JSON object per message; "ready" once subscribed.
  pub PORT TOPIC JSON: publishes the payload described by JSON (protobuf JSON
          mapping of org.eclipse.tahu.protobuf.Payload) at QoS 0; JSON may
          also be a STATE object when TOPIC is a STATE topic (retained).
"""
import json
import sys

import paho.mqtt.client as mqtt

from google.protobuf import json_format
from tahutils.tahu import sparkplug_b_pb2 as pb


def value(m):
    kind = m.WhichOneof("value")
    return None if kind is None else getattr(m, kind)


def metric(m):
    out = {
        "datatype": m.datatype,
        "value": value(m),
        "value_kind": m.WhichOneof("value"),
    }
    for f in ("name", "alias", "timestamp", "is_historical", "is_null"):
        if m.HasField(f):
            out[f] = getattr(m, f)
    if m.HasField("properties"):
        out["properties"] = {
            k: {"type": v.type, "value": value(v)}
            for k, v in zip(m.properties.keys, m.properties.values)
        }
    return out


def describe(topic, raw):
    out = {"topic": topic}
    if "/STATE/" in topic:
        out["state"] = raw.decode()
    else:
        p = pb.Payload()
        p.ParseFromString(raw)
        out["timestamp"] = p.timestamp if p.HasField("timestamp") else None
        out["seq"] = p.seq if p.HasField("seq") else None
        out["metrics"] = [metric(m) for m in p.metrics]
    return out


def sub(port):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)

    def on_connect(client, userdata, flags, reason, props):
        client.subscribe("spBv1.0/#", qos=1)

    def on_subscribe(client, userdata, mid, reasons, props):
        print(json.dumps({"ready": True}), flush=True)

    def on_message(client, userdata, msg):
        print(json.dumps(describe(msg.topic, msg.payload)), flush=True)

    c.on_connect = on_connect
    c.on_subscribe = on_subscribe
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.loop_forever()


def pub(port, topic, text):
    if "/STATE/" in topic:
        raw, retain = text.encode(), True
    else:
        raw = json_format.ParseDict(json.loads(text), pb.Payload()).SerializeToString()
        retain = False
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", port)
    c.loop_start()
    info = c.publish(topic, raw, qos=1, retain=retain)
    info.wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


if __name__ == "__main__":
    if sys.argv[1] == "sub":
        sub(int(sys.argv[2]))
    else:
        pub(int(sys.argv[2]), sys.argv[3], sys.argv[4])
